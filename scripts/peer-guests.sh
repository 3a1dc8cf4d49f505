#!/usr/bin/env bash
# Peer comparison on the guest layouts (issue 18, "Peer comparison"): each fixture guest
# migrated by `v2k migrate --no-validate` and by `virt-v2v -i vmx -o local -of qcow2`, and
# each output booted the same way by tests/fixtures/boot.sh — virtio-blk and virtio-net,
# the NIC in a PCIe slot other than ESXi's (so an unpinned guest sees a new name, as on
# KVM), UEFI guests on OVMF with an empty variable store (the NVRAM does not travel).
# Does it boot, is the NIC still called what its configuration names, does it keep its
# address? A comparison, not a test: exits 0 when every run happened (whatever the
# outcomes), non-zero on an error of its own.
#
#   scripts/peer-guests.sh [--variant NAME]... [--workdir DIR] [--timeout SECS]
#
# Default variants: rhel-shaped-efi debian-dracut-lvm ubuntu-shaped-sb (booted on OVMF with
# Secure Boot enforced; only its first NIC, the static one, is given: boot.sh has one). Environment: V2K = the v2k
# binary (default target/release/v2k, built if absent). Prints a table on stdout and
# keeps each boot's serial log under the work directory.
set -euo pipefail

VARIANTS=() WORKDIR=/var/tmp/v2k-peer-guests TIMEOUT=300
while [ $# -gt 0 ]; do
    case "$1" in
        --variant) VARIANTS+=("$2"); shift 2 ;;
        --workdir) WORKDIR=$2; shift 2 ;;
        --timeout) TIMEOUT=$2; shift 2 ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) echo "peer-guests: unknown argument $1" >&2; exit 2 ;;
    esac
done
[ "${#VARIANTS[@]}" -gt 0 ] || VARIANTS=(rhel-shaped-efi debian-dracut-lvm ubuntu-shaped-sb)

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
for c in virt-v2v qemu-img jq; do
    command -v "$c" >/dev/null || { echo "peer-guests: missing $c (scripts/setup.sh)" >&2; exit 3; }
done
if [ -z "${V2K:-}" ]; then
    V2K=${CARGO_TARGET_DIR:-$HERE/target}/release/v2k
    [ -x "$V2K" ] || (cd "$HERE" && cargo build --release -p v2k-cli >&2)
fi
export LIBGUESTFS_BACKEND=direct
if ! { [ -r /dev/kvm ] && [ -w /dev/kvm ] && grep -qwE 'vmx|svm' /proc/cpuinfo; }; then
    export LIBGUESTFS_BACKEND_SETTINGS=force_tcg
fi
mkdir -p "$WORKDIR"

ROWS=()
# boot_row VARIANT TOOL SECONDS FIRMWARE WANT_ADDR DISK...: boots, appends a table row.
boot_row() {
    local v=$1 tool=$2 secs=$3 fw=$4 want=$5; shift 5
    local out net name addr kind
    out=$(bash "$HERE/tests/fixtures/boot.sh" --bus virtio --firmware "$fw" --nic-slot 5 --mac "$MAC" \
        --timeout "$TIMEOUT" --serial-log "$WORKDIR/$v-$tool.serial.log" "$@")
    kind=$(sed -n 's/^outcome=//p' <<<"$out")
    net=$(sed -n 's/^marker_net=//p' <<<"$out")
    # marker: "links=NAME[,..] addrs=NAME=A/P[,..]"
    name=$(sed -n 's/^links=\([^ ,]*\).*/\1/p' <<<"$net")
    addr=$(sed -n 's/.*addrs=[^=]*=\([^ ,]*\).*/\1/p' <<<"$net")
    local kept=no
    [ "$addr" = "$want" ] && kept=yes
    ROWS+=("$v|$tool|${secs}s|$kind|${name:--}|${addr:--}|$kept")
}

for v in "${VARIANTS[@]}"; do
    FIX=$(bash "$HERE/tests/fixtures/build.sh" "$v")
    VMX=$FIX/vmx-sparse/$v.vmx
    FW=$(jq -r .guest.firmware "$FIX/manifest.json")
    # A Secure Boot guest boots on the enforcing firmware (as v2k's target picks it).
    [ "$(jq -r '.guest["secure-boot"] // false' "$FIX/manifest.json")" = true ] && FW=efi-sb
    WANT=$(jq -r .guest.ipv4.address "$FIX/manifest.json")
    MAC=$(jq -r .mac "$FIX/manifest.json")
    echo "== $v ($FW, expects $WANT on ens192)" >&2

    rm -rf "$WORKDIR/$v-v2k"
    start=$(date +%s)
    if "$V2K" migrate "$VMX" --out "$WORKDIR/$v-v2k" --no-validate >"$WORKDIR/$v-v2k.log" 2>&1; then
        secs=$(( $(date +%s) - start ))
        mapfile -t disks < <(jq -r '.disks[].output.path' "$WORKDIR/$v-v2k/report.json")
        boot_row "$v" v2k "$secs" "$FW" "$WANT" "${disks[@]}"
    else
        ROWS+=("$v|v2k|-|failed: $(tail -n1 "$WORKDIR/$v-v2k.log" | cut -c1-60)|-|-|no")
    fi

    rm -rf "$WORKDIR/$v-v2v"; mkdir -p "$WORKDIR/$v-v2v"
    start=$(date +%s)
    if virt-v2v -i vmx "$VMX" -o local -os "$WORKDIR/$v-v2v" -of qcow2 \
            >"$WORKDIR/$v-v2v.log" 2>&1; then
        secs=$(( $(date +%s) - start ))
        mapfile -t disks < <(ls "$WORKDIR/$v-v2v/$v"-sd? 2>/dev/null)
        boot_row "$v" virt-v2v "$secs" "$FW" "$WANT" "${disks[@]}"
    else
        why=$(grep -m1 -E 'virt-v2v: error' "$WORKDIR/$v-v2v.log" | cut -c1-70 || true)
        ROWS+=("$v|virt-v2v|-|refused: ${why:-see $WORKDIR/$v-v2v.log}|-|-|no")
    fi
done

printf '\n| layout | tool | conversion | boot outcome | NIC name | IPv4 | address kept |\n'
printf '|---|---|---|---|---|---|---|\n'
for r in "${ROWS[@]}"; do printf '| %s |\n' "${r//|/ | }"; done
load=$(cut -d' ' -f1-3 /proc/loadavg)
echo "(load $load; serial logs in $WORKDIR)" >&2
