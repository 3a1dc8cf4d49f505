#!/usr/bin/env bash
# Installs every system package v2k's build, tests, demo and benchmarks need on a
# fresh Debian 12 (bookworm) machine, and starts the services they use. Idempotent:
# a second run installs nothing and only (re)starts what is not running.
#
# Why backports: qemu-utils 10 ships from bookworm-backports on these machines and
# plain bookworm's qemu-system-x86 (7.2) conflicts with it, so both come from there.
set -euo pipefail

log() { printf 'setup: %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
    log "must run as root (installs Debian packages)"; exit 2
fi

export DEBIAN_FRONTEND=noninteractive

BACKPORTS=/etc/apt/sources.list.d/v2k-bookworm-backports.sources
if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    log "adding the bookworm-backports source"
    cat >"$BACKPORTS" <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    rm -f /var/lib/apt/v2k-apt-updated
fi

# Packages from bookworm-backports (must match the preinstalled qemu-utils 10).
# python3-virt-firmware (virt-fw-vars): the ubuntu-shaped-sb fixture enrolls Secure Boot
# keys in its variable store; bookworm itself has no such tool.
BPO_PKGS=(qemu-system-x86 qemu-utils qemu-block-extra python3-virt-firmware)
# Everything else, from bookworm.
PKGS=(
    build-essential pkg-config ca-certificates time python3 jq xz-utils bc
    # converters: reference tools for differential tests
    # fixtures: guest builders
    debootstrap grub-pc-bin grub2-common parted e2fsprogs lvm2 dosfstools xfsprogs
    fdisk kpartx udev cpio zstd
    # injector: libguestfs with a host kernel for its appliance
    libguestfs-dev libguestfs-tools guestfish linux-image-amd64 supermin
    # validator: libvirt and firmware
    libvirt-daemon-system libvirt-clients libxml2-utils ovmf
    # reports: headless rendering check
    chromium
    # benchmarks: the peer
    virt-v2v libnbd-bin hyperfine
    # virt-v2v's -o local/-o disk output runs through nbdkit (not a dependency of it)
    nbdkit
    # windows: NTFS inside the appliance, hivexregedit and virt-inspector for the tests
    ntfs-3g libwin-hivex-perl guestfs-tools
    # windows: a virtio-win ISO is listed and extracted with bsdtar; the tests build ISOs
    libarchive-tools xorriso
    # vsphere: VMware's vCenter simulator (vcsim), built by the tests from govmomi's source
    golang-go golang-github-vmware-govmomi-dev curl
    # delivery: the qemu+ssh:// test starts its own sshd on a loopback port
    openssh-server openssh-client
    # after cutover: the test's isolated libvirt network (DHCP, DNS and the gateway
    # the guest asks) runs libvirt's dnsmasq
    dnsmasq-base
)

missing() {
    local p out=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || out+=("$p")
    done
    printf '%s\n' "${out[@]}"
}

mapfile -t need_bpo < <(missing "${BPO_PKGS[@]}" | sed '/^$/d')
mapfile -t need < <(missing "${PKGS[@]}" | sed '/^$/d')
if [ "${#need_bpo[@]}" -gt 0 ] || [ "${#need[@]}" -gt 0 ]; then
    log "apt-get update"
    apt-get update -qq
    if [ "${#need_bpo[@]}" -gt 0 ]; then
        log "installing from bookworm-backports: ${need_bpo[*]}"
        apt-get install -y -qq -t bookworm-backports --no-install-recommends "${BPO_PKGS[@]}" >/dev/null
    fi
    if [ "${#need[@]}" -gt 0 ]; then
        log "installing: ${need[*]}"
        apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    fi
else
    log "all packages present"
fi

# libvirt without systemd: start the daemons by hand when they are not running.
if ! pgrep -x virtlogd >/dev/null; then log "starting virtlogd"; virtlogd -d; fi
if ! pgrep -x libvirtd >/dev/null; then log "starting libvirtd"; libvirtd -d; fi
for _ in $(seq 1 50); do
    [ -S /var/run/libvirt/libvirt-sock ] && break
    sleep 0.2
done
[ -S /var/run/libvirt/libvirt-sock ] || { log "libvirtd did not come up"; exit 1; }

# cargo-machete: scripts/test.sh fails on a dependency no crate uses. Pinned exactly so
# a new release's heuristics cannot turn CI red on an unchanged tree.
MACHETE_VERSION=0.9.2
if ! cargo machete --version 2>/dev/null | grep -qF "$MACHETE_VERSION"; then
    log "installing cargo-machete $MACHETE_VERSION"
    cargo install --locked --quiet "cargo-machete@$MACHETE_VERSION"
fi

# Ansible for the scale-out collection (ansible/, docs/scale-out.md): ansible-core from
# PyPI, pinned, in its own venv on Debian's python3. Not Debian's `ansible-core`
# package: bookworm ships 2.14, out of upstream support since 2024, and AWX/AAP
# execution environments run current cores; one pinned version behaves the same on
# every Debian release, and the venv leaves the system's Python alone.
ANSIBLE_CORE_VERSION=2.19.14
ANSIBLE_VENV=/opt/v2k/ansible
if ! "$ANSIBLE_VENV/bin/ansible-playbook" --version 2>/dev/null | grep -qF "core $ANSIBLE_CORE_VERSION"; then
    log "installing ansible-core $ANSIBLE_CORE_VERSION into $ANSIBLE_VENV"
    dpkg-query -W -f='${Status}' python3-venv 2>/dev/null | grep -q 'install ok installed' \
        || apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
    /usr/bin/python3 -m venv "$ANSIBLE_VENV"
    "$ANSIBLE_VENV/bin/pip" install --quiet --disable-pip-version-check "ansible-core==$ANSIBLE_CORE_VERSION"
fi

# cargo-fuzz is only built for CI's compile check of fuzz/ (nightly is not needed for that).
log "done"
