//! What the guest is, learnt inside the appliance before anything is changed: OS and
//! distribution, root and mount layout, kernels and their virtio drivers, initramfs
//! generator, bootloader, network configuration systems, NIC names, VMware Tools.
//! Serialised into the conversion log (docs/inject.md, `inspection`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::appliance::{gerr, Appliance};
use crate::edit::{self, DiskBus};
use crate::error::{Error, Result};
use crate::netconf;

/// Distributions whose tools and layouts we know (libguestfs `inspect_get_distro` ids).
pub const SUPPORTED_DISTROS: &[&str] = &[
    "debian",
    "ubuntu",
    "linuxmint",
    "rhel",
    "centos",
    "fedora",
    "rocky",
    "almalinux",
    "oraclelinux",
    "redhat-based",
    "sles",
    "suse-based",
    "opensuse",
];

/// The virtio drivers a kernel must have to boot and reach the network on KVM.
pub const VIRTIO_DRIVERS: [&str; 4] = ["virtio_blk", "virtio_scsi", "virtio_net", "virtio_pci"];

/// How a kernel provides a driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Presence {
    /// A module file under /lib/modules/<version>/.
    Module,
    /// Compiled in (`=y` in /boot/config-<version>, or listed in modules.builtin).
    BuiltIn,
    Absent,
}

impl Presence {
    pub fn present(self) -> bool {
        self != Presence::Absent
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Kernel {
    pub version: String,
    /// The kernel image, e.g. `/boot/vmlinuz-6.1.0-50-amd64`.
    pub image: String,
    /// The initramfs the bootloader loads for it, when one exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initramfs: Option<String>,
    /// virtio_blk / virtio_scsi / virtio_net / virtio_pci → presence.
    pub virtio: BTreeMap<String, Presence>,
}

impl Kernel {
    /// Can boot from a virtio disk on `scsi` (virtio-scsi) or virtio-blk.
    pub fn virtio_capable(&self, scsi: bool) -> bool {
        let has = |d: &str| self.virtio.get(d).is_some_and(|p| p.present());
        has("virtio_pci")
            && if scsi {
                has("virtio_scsi")
            } else {
                has("virtio_blk")
            }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InitramfsTool {
    InitramfsTools,
    Dracut,
    SuseMkinitrd,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Bootloader {
    /// `grub2-bios`, `grub2-efi`, `grub-legacy` or `unknown`.
    pub kind: String,
    /// The generated configuration, e.g. `/boot/grub/grub.cfg`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
    /// The guest's generator: `update-grub`, `grub-mkconfig` or `grub2-mkconfig`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mkconfig: Option<String>,
}

/// One mounted filesystem of the guest, as the appliance sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Mount {
    pub mountpoint: String,
    /// The appliance's device (`/dev/sda1`, `/dev/debian-vg/root`).
    pub device: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fstype: Option<String>,
}

/// A NIC name the guest's network configuration refers to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ConfiguredNic {
    pub name: String,
    /// A MAC the configuration ties to it, when it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// The file that names it.
    pub file: String,
    /// Its static IPv4 address, gateway and resolvers, when the configuration sets
    /// them (checked after the validation boot: `static-ip:NAME`, `route`, `dns`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<crate::netconf::StaticIpv4>,
}

/// The inspection result, recorded in the conversion log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Inspection {
    /// libguestfs root device.
    pub root: String,
    /// `linux`, `windows`, ...
    pub os_type: String,
    pub distro: String,
    pub product_name: String,
    pub major_version: i32,
    pub minor_version: i32,
    pub arch: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// `deb`, `rpm`, ...
    pub package_format: String,
    /// Mounted filesystems, shortest mount point first.
    pub mounts: Vec<Mount>,
    /// Logical volumes seen by the appliance.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub logical_volumes: Vec<String>,
    pub kernels: Vec<Kernel>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initramfs_tool: Option<InitramfsTool>,
    pub bootloader: Bootloader,
    /// `ifupdown`, `systemd-networkd`, `networkmanager`, `netplan`, `ifcfg`.
    pub network_config: Vec<String>,
    pub configured_nics: Vec<ConfiguredNic>,
    /// VMware Tools found: package names, or paths of a tarball install.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vmware_tools: Vec<String>,
    /// The systemd services the source starts at boot (enabled in
    /// `/etc/systemd/system/{multi-user,graphical}.target.wants`), but VMware's own
    /// (removed by the conversion) and v2k's agent: each must run on the target
    /// (`services` check).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub enabled_services: Vec<String>,
    /// SELINUX= from /etc/selinux/config, when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selinux: Option<String>,
    /// A previous `v2k inject` left its marker.
    pub already_converted: bool,
}

/// Where a previous injection records itself in the guest.
pub const MARKER: &str = "/var/lib/v2k/injected.json";

/// What identifies the OS on the root filesystem.
#[derive(Debug, Clone, Default)]
pub struct OsRelease {
    pub id: String,
    pub version_id: String,
    pub pretty_name: String,
}

impl OsRelease {
    pub fn parse(text: &str) -> OsRelease {
        let get = |k: &str| {
            edit::shell_var(text, k)
                .map(|v| edit::printable(&v))
                .unwrap_or_default()
        };
        OsRelease {
            id: get("ID").to_ascii_lowercase(),
            version_id: get("VERSION_ID"),
            pretty_name: get("PRETTY_NAME"),
        }
    }

    /// The distribution id in libguestfs' vocabulary, or `None` when unknown.
    pub fn distro(&self) -> Option<&'static str> {
        let known = |id: &str| -> Option<&'static str> {
            Some(match id {
                "debian" => "debian",
                "ubuntu" => "ubuntu",
                "linuxmint" => "linuxmint",
                "rhel" => "rhel",
                "centos" => "centos",
                "fedora" => "fedora",
                "rocky" => "rocky",
                "almalinux" => "almalinux",
                "ol" => "oraclelinux",
                "sles" | "sled" => "sles",
                "opensuse" | "opensuse-leap" | "opensuse-tumbleweed" => "opensuse",
                _ => return None,
            })
        };
        known(&self.id)
    }

    fn version(&self) -> (i32, i32) {
        let mut it = self
            .version_id
            .split('.')
            .map(|p| p.parse::<i32>().unwrap_or(0));
        (it.next().unwrap_or(0), it.next().unwrap_or(0))
    }
}

/// Filesystems that can hold a Linux root or mount.
const LINUX_FS: [&str; 5] = ["ext2", "ext3", "ext4", "xfs", "btrfs"];

/// Finds the one OS root and mounts its filesystems (root first) as its fstab says.
/// Refuses a disk set with no OS, more than one, Windows or an unknown distribution,
/// before any write.
///
/// This is a small inspection of our own rather than libguestfs' `inspect_os`: that
/// one parses every filesystem with Augeas and took 26-35 s of appliance time under
/// TCG here, more than the whole conversion; we need only os-release and fstab.
pub fn mount_root(app: &Appliance) -> Result<(String, Vec<Mount>, OsRelease)> {
    let g = &app.g;
    let fss = g.list_filesystems().map_err(gerr("list_filesystems"))?;
    let mut devs: Vec<(String, String)> = fss.into_iter().collect();
    devs.sort();
    let mut roots = Vec::new();
    let mut windows = false;
    for (dev, fstype) in &devs {
        let linux = LINUX_FS.contains(&fstype.as_str());
        if !linux && fstype != "ntfs" {
            continue;
        }
        if g.mount_ro(dev, "/").is_err() {
            continue;
        }
        if linux {
            let rel = ["/etc/os-release", "/usr/lib/os-release"]
                .into_iter()
                .find_map(|p| app.read_opt(p).ok().flatten());
            if app.is_file("/etc/fstab").unwrap_or(false) && app.is_dir("/etc").unwrap_or(false) {
                roots.push((dev.clone(), OsRelease::parse(&rel.unwrap_or_default())));
            }
        } else if app.is_dir("/Windows/System32").unwrap_or(false)
            || app.is_dir("/WINDOWS/system32").unwrap_or(false)
        {
            windows = true;
        }
        g.umount_all().map_err(gerr("umount_all"))?;
    }
    let (root, rel) = match roots.len() {
        0 if windows => {
            return Err(Error::Refused(
                "Windows directory without its registry hives (System32\\config\\SYSTEM and \
                 SOFTWARE): not a convertible Windows install; nothing was changed"
                    .into(),
            ))
        }
        0 => {
            return Err(Error::Refused(
                "no operating system found on the disks (blank disk, unreadable or damaged \
                 root filesystem, or encrypted root)"
                    .into(),
            ))
        }
        1 => roots.remove(0),
        n => {
            let list: Vec<&str> = roots.iter().map(|(d, _)| d.as_str()).collect();
            return Err(Error::Refused(format!(
                "{n} operating systems found ({}): multi-boot guests are not converted",
                list.join(", ")
            )));
        }
    };
    if rel.distro().is_none() {
        return Err(Error::Refused(format!(
            "unsupported Linux distribution {:?} ({}): v2k knows {}",
            rel.id,
            if rel.pretty_name.is_empty() {
                "no os-release"
            } else {
                rel.pretty_name.as_str()
            },
            SUPPORTED_DISTROS.join(", ")
        )));
    }

    // The fstab, resolved to appliance devices.
    g.mount_ro(&root, "/").map_err(gerr("mount_ro root"))?;
    let fstab = app.read("/etc/fstab")?;
    g.umount_all().map_err(gerr("umount_all"))?;
    let mut points: Vec<(String, String)> = vec![("/".to_string(), root.clone())];
    for line in fstab.lines().map(str::trim) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if line.starts_with('#') || f.len() < 3 {
            continue;
        }
        let (spec, mp, fstype) = (f[0], f[1], f[2]);
        let opts = f.get(3).copied().unwrap_or("");
        if mp == "/"
            || !mp.starts_with('/')
            || !LINUX_FS.contains(&fstype) && fstype != "vfat" && fstype != "auto"
        {
            continue;
        }
        match resolve_spec(app, spec, &devs)? {
            Some(dev) => points.push((mp.to_string(), dev)),
            None if opts.split(',').any(|o| o == "noauto" || o == "nofail") => {}
            None => {
                return Err(Error::Refused(format!(
                    "fstab entry {spec} for {mp} matches no filesystem on the given disks \
                     (a disk missing from the command line?)"
                )))
            }
        }
    }
    // Parents before children: "/" then "/boot" then "/boot/efi".
    points.sort_by_key(|(mp, _)| (mp.matches('/').count(), mp.len(), mp.clone()));
    let mut mounts = Vec::new();
    for (mp, dev) in points {
        // A damaged filesystem stops the conversion here, before any change.
        g.mount(&dev, &mp).map_err(|e| {
            Error::Refused(format!(
                "cannot mount {mp} ({dev}) inside the appliance: {}; a damaged or foreign \
             filesystem is not converted",
                gerr_message(e)
            ))
        })?;
        let fstype = devs.iter().find(|(d, _)| *d == dev).map(|(_, t)| t.clone());
        mounts.push(Mount {
            mountpoint: mp,
            device: dev,
            fstype,
        });
    }
    Ok((root, mounts, rel))
}

/// An fstab device spec as an appliance device: UUID=, LABEL=, /dev/disk/by-*,
/// /dev/mapper and /dev/VG/LV names, and /dev/sdX-style names (the appliance names the
/// disks sda, sdb... in the order given, as the guest did on PVSCSI).
fn resolve_spec(app: &Appliance, spec: &str, devs: &[(String, String)]) -> Result<Option<String>> {
    let g = &app.g;
    let by = |want: &str, f: &dyn Fn(&str) -> Option<String>| {
        devs.iter()
            .find(|(d, _)| f(d).is_some_and(|v| v.eq_ignore_ascii_case(want)))
            .map(|(d, _)| d.clone())
    };
    let uuid = spec
        .strip_prefix("UUID=")
        .or_else(|| spec.strip_prefix("/dev/disk/by-uuid/"));
    if let Some(u) = uuid {
        return Ok(by(u.trim_matches('"'), &|d| g.vfs_uuid(d).ok()));
    }
    let label = spec
        .strip_prefix("LABEL=")
        .or_else(|| spec.strip_prefix("/dev/disk/by-label/"));
    if let Some(l) = label {
        return Ok(by(l.trim_matches('"'), &|d| g.vfs_label(d).ok()));
    }
    if spec.starts_with("/dev/mapper/") || spec.matches('/').count() == 3 {
        if let Ok(c) = g.lvm_canonical_lv_name(spec) {
            return Ok(devs.iter().find(|(d, _)| *d == c).map(|(d, _)| d.clone()));
        }
    }
    if let Some(name) = spec.strip_prefix("/dev/") {
        if let Some(sd) = edit::rename_device(name, DiskBus::VirtioScsi) {
            let dev = format!("/dev/{sd}");
            return Ok(devs.iter().find(|(d, _)| *d == dev).map(|(d, _)| d.clone()));
        }
        let dev = spec.to_string();
        return Ok(devs.iter().find(|(d, _)| *d == dev).map(|(d, _)| d.clone()));
    }
    Ok(None)
}

fn gerr_message(e: guestfs::Error) -> String {
    match gerr("")(e) {
        Error::Guestfs { message, .. } => message,
        other => other.to_string(),
    }
}

/// Gathers everything else, with the filesystems mounted.
pub fn inspect(
    app: &Appliance,
    root: &str,
    mounts: Vec<Mount>,
    rel: &OsRelease,
) -> Result<Inspection> {
    let g = &app.g;
    let kernels = kernels(app)?;
    let initramfs_tool =
        if app.exists("/usr/sbin/mkinitramfs")? && app.exists("/usr/sbin/update-initramfs")? {
            Some(InitramfsTool::InitramfsTools)
        } else if app.exists("/usr/bin/dracut")? || app.exists("/usr/sbin/dracut")? {
            Some(InitramfsTool::Dracut)
        } else if app.exists("/sbin/mkinitrd")? || app.exists("/usr/sbin/mkinitrd")? {
            Some(InitramfsTool::SuseMkinitrd)
        } else {
            None
        };
    let (network_config, configured_nics) = network(app)?;
    let selinux = app
        .read_opt("/etc/selinux/config")?
        .and_then(|c| edit::shell_var(&c, "SELINUX"));
    let (mut major_version, mut minor_version) = rel.version();
    // Debian's os-release says only "12"; /etc/debian_version has the point release.
    if rel.id == "debian" {
        if let Some(v) = app.read_opt("/etc/debian_version")? {
            let mut it = v.trim().split('.').map(|p| p.parse::<i32>());
            if let (Some(Ok(a)), Some(Ok(b))) = (it.next(), it.next()) {
                (major_version, minor_version) = (a, b);
            }
        }
    }
    let package_format = if app.exists("/var/lib/dpkg/status")? {
        "deb"
    } else if app.exists("/var/lib/rpm")? || app.exists("/usr/lib/sysimage/rpm")? {
        "rpm"
    } else {
        "unknown"
    };
    Ok(Inspection {
        root: root.to_string(),
        os_type: "linux".into(),
        distro: rel.distro().unwrap_or("unknown").into(),
        product_name: rel.pretty_name.clone(),
        major_version,
        minor_version,
        // /bin/sh is a symlink (to dash, bash...), which file_architecture refuses
        // with an error line of its own on stderr: resolve it (inside the guest) first.
        arch: g
            .realpath("/bin/sh")
            .and_then(|p| g.file_architecture(&p))
            .unwrap_or_else(|_| "unknown".into()),
        hostname: app
            .read_opt("/etc/hostname")?
            .and_then(|h| h.lines().next().map(edit::printable)),
        package_format: package_format.into(),
        mounts,
        logical_volumes: g.lvs().unwrap_or_default(),
        kernels,
        initramfs_tool,
        bootloader: bootloader(app)?,
        network_config,
        configured_nics,
        vmware_tools: vmware_tools(app)?,
        enabled_services: enabled_services(app)?,
        selinux,
        already_converted: app.exists(MARKER)?,
    })
}

fn kernels(app: &Appliance) -> Result<Vec<Kernel>> {
    let mut out = Vec::new();
    for version in app.ls("/lib/modules")? {
        // A name from the guest: only plain version strings are used in paths/commands.
        if !edit::is_safe_name(&version) {
            continue;
        }
        let image = [
            format!("/boot/vmlinuz-{version}"),
            format!("/lib/modules/{version}/vmlinuz"),
        ]
        .into_iter()
        .find(|p| app.is_file(p).unwrap_or(false));
        let Some(image) = image else {
            // Modules left behind by a removed kernel.
            continue;
        };
        let initramfs = [
            format!("/boot/initrd.img-{version}"),
            format!("/boot/initramfs-{version}.img"),
            format!("/boot/initrd-{version}"),
        ]
        .into_iter()
        .find(|p| app.is_file(p).unwrap_or(false));
        let builtin = app
            .read_opt(&format!("/lib/modules/{version}/modules.builtin"))?
            .unwrap_or_default();
        let config = app
            .read_opt(&format!("/boot/config-{version}"))?
            .unwrap_or_default();
        let dep = app
            .read_opt(&format!("/lib/modules/{version}/modules.dep"))?
            .unwrap_or_default();
        let mut virtio = BTreeMap::new();
        for drv in VIRTIO_DRIVERS {
            virtio.insert(drv.to_string(), presence(drv, &builtin, &config, &dep));
        }
        out.push(Kernel {
            version,
            image,
            initramfs,
            virtio,
        });
    }
    Ok(out)
}

/// A driver's presence from modules.builtin, the kernel config and modules.dep (which
/// lists every module file, so no directory walk is needed).
pub(crate) fn presence(drv: &str, builtin: &str, config: &str, dep: &str) -> Presence {
    let file_matches = |path: &str| {
        let base = path.rsplit('/').next().unwrap_or(path);
        let stem = base.split(".ko").next().unwrap_or(base);
        stem.replace('-', "_") == drv
    };
    if builtin.lines().any(|l| file_matches(l.trim())) {
        return Presence::BuiltIn;
    }
    let option = format!("CONFIG_{}=", drv.to_ascii_uppercase());
    if let Some(v) = config.lines().find_map(|l| l.trim().strip_prefix(&option)) {
        if v == "y" {
            return Presence::BuiltIn;
        }
    }
    if dep
        .lines()
        .filter_map(|l| l.split(':').next())
        .any(file_matches)
    {
        return Presence::Module;
    }
    Presence::Absent
}

fn bootloader(app: &Appliance) -> Result<Bootloader> {
    // GRUB for UEFI: a grub.cfg on the ESP (shim installs), or only the loader itself
    // (GRUB installed without shim has `\EFI\<vendor>\grubx64.efi` and keeps its
    // configuration in /boot/grub). FAT is case-insensitive; the glob is not.
    let mut efi_cfgs = app.glob("/boot/efi/EFI/*/grub.cfg")?;
    for loader in ["grubx64.efi", "shimx64.efi", "GRUBX64.EFI", "SHIMX64.EFI"] {
        efi_cfgs.extend(app.glob(&format!("/boot/efi/EFI/*/{loader}"))?);
    }
    let (kind, config) = if app.is_file("/boot/grub2/grub.cfg")? {
        ("grub2", Some("/boot/grub2/grub.cfg".to_string()))
    } else if app.is_file("/boot/grub/grub.cfg")? {
        ("grub2", Some("/boot/grub/grub.cfg".to_string()))
    } else if app.is_file("/boot/grub/menu.lst")? {
        ("grub-legacy", Some("/boot/grub/menu.lst".to_string()))
    } else {
        ("unknown", None)
    };
    let kind = match (kind, efi_cfgs.is_empty()) {
        ("grub2", false) => "grub2-efi",
        ("grub2", true) => "grub2-bios",
        (k, _) => k,
    };
    let mkconfig = if app.exists("/usr/sbin/update-grub")? {
        Some("update-grub")
    } else if app.exists("/usr/sbin/grub2-mkconfig")? {
        Some("grub2-mkconfig")
    } else if app.exists("/usr/sbin/grub-mkconfig")? {
        Some("grub-mkconfig")
    } else {
        None
    };
    Ok(Bootloader {
        kind: kind.to_string(),
        config,
        mkconfig: mkconfig.map(str::to_string),
    })
}

fn network(app: &Appliance) -> Result<(Vec<String>, Vec<ConfiguredNic>)> {
    let mut systems = Vec::new();
    let mut nics: Vec<ConfiguredNic> = Vec::new();
    let mut add = |name: String,
                   mac: Option<String>,
                   file: &str,
                   ipv4: Option<crate::netconf::StaticIpv4>| {
        if name == "lo" || !edit::is_safe_name(&name) {
            return;
        }
        if let Some(n) = nics.iter_mut().find(|n| n.name == name) {
            if n.mac.is_none() {
                n.mac = mac;
            }
            if n.ipv4.is_none() {
                n.ipv4 = ipv4;
            }
        } else {
            nics.push(ConfiguredNic {
                name,
                mac,
                file: file.to_string(),
                ipv4,
            });
        }
    };
    // ifupdown
    let mut ifupdown_files = vec!["/etc/network/interfaces".to_string()];
    ifupdown_files.extend(
        app.ls("/etc/network/interfaces.d")?
            .into_iter()
            .map(|f| format!("/etc/network/interfaces.d/{f}")),
    );
    let mut have_ifupdown = false;
    for f in &ifupdown_files {
        if let Some(text) = app.read_opt(f)? {
            for name in edit::ifupdown_names(&text) {
                have_ifupdown = true;
                let ipv4 = netconf::ifupdown(&text, &name);
                add(name, None, f, ipv4);
            }
        }
    }
    if have_ifupdown || app.exists("/sbin/ifup")? && app.exists("/etc/network/interfaces")? {
        systems.push("ifupdown".to_string());
    }
    // systemd-networkd
    let mut have_networkd = false;
    for f in app.ls("/etc/systemd/network")? {
        if !f.ends_with(".network") {
            continue;
        }
        let path = format!("/etc/systemd/network/{f}");
        if let Some(text) = app.read_opt(&path)? {
            have_networkd = true;
            let (names, mac) = edit::networkd_match(&text);
            for name in names {
                add(name, mac.clone(), &path, netconf::networkd(&text));
            }
        }
    }
    if have_networkd {
        systems.push("systemd-networkd".to_string());
    }
    // NetworkManager keyfiles and legacy ifcfg files.
    let nm = app.ls("/etc/NetworkManager/system-connections")?;
    if app.is_dir("/etc/NetworkManager")? {
        systems.push("networkmanager".to_string());
    }
    for f in nm {
        let path = format!("/etc/NetworkManager/system-connections/{f}");
        if let Some(text) = app.read_opt(&path)? {
            if let Some(name) = edit::ini_value(&text, "interface-name") {
                add(
                    name,
                    edit::ini_value(&text, "mac-address").map(|m| m.to_lowercase()),
                    &path,
                    netconf::nm_keyfile(&text),
                );
            }
        }
    }
    for dir in ["/etc/sysconfig/network-scripts", "/etc/sysconfig/network"] {
        let files: Vec<String> = app
            .ls(dir)?
            .into_iter()
            .filter(|f| f.starts_with("ifcfg-"))
            .collect();
        if !files.is_empty() && !systems.iter().any(|s| s == "ifcfg") {
            systems.push("ifcfg".to_string());
        }
        for f in files {
            let path = format!("{dir}/{f}");
            if let Some(text) = app.read_opt(&path)? {
                let name = edit::shell_var(&text, "DEVICE")
                    .or_else(|| f.strip_prefix("ifcfg-").map(str::to_string));
                if let Some(name) = name {
                    add(
                        name,
                        edit::shell_var(&text, "HWADDR").map(|m| m.to_lowercase()),
                        &path,
                        netconf::ifcfg(&text),
                    );
                }
            }
        }
    }
    // netplan: interface names are the keys under ethernets:.
    let netplan = app.glob("/etc/netplan/*.yaml")?;
    if !netplan.is_empty() {
        systems.push("netplan".to_string());
    }
    for path in netplan {
        if let Some(text) = app.read_opt(&path)? {
            for name in edit::netplan_ethernets(&text) {
                let ipv4 = netconf::netplan(&text, &name);
                add(name, None, &path, ipv4);
            }
        }
    }
    // Old udev persistent names: MAC → name.
    if let Some(text) = app.read_opt("/etc/udev/rules.d/70-persistent-net.rules")? {
        for (mac, name) in edit::udev_persistent(&text) {
            add(
                name,
                Some(mac),
                "/etc/udev/rules.d/70-persistent-net.rules",
                None,
            );
        }
    }
    Ok((systems, nics))
}

/// VMware's guest services: enabled in a VMware guest, removed by the conversion
/// (`linux::disable_tool_units`), so never expected to run on KVM.
pub const VMWARE_TOOL_UNITS: &[&str] = &[
    "open-vm-tools.service",
    "vmtoolsd.service",
    "vgauth.service",
    "vmware-tools.service",
    "run-vmblock\\x2dfuse.mount",
];

fn enabled_services(app: &Appliance) -> Result<Vec<String>> {
    let mut found = Vec::new();
    for target in ["multi-user", "graphical"] {
        for unit in app.ls(&format!("/etc/systemd/system/{target}.target.wants"))? {
            if crate::agent::is_unit_name(&unit)
                && !VMWARE_TOOL_UNITS.contains(&unit.as_str())
                && !crate::agent::WANTS_LINK.ends_with(&format!("/{unit}"))
                && !found.contains(&unit)
            {
                found.push(unit);
            }
        }
    }
    found.sort();
    found.truncate(crate::agent::MAX_SERVICES);
    Ok(found)
}

fn vmware_tools(app: &Appliance) -> Result<Vec<String>> {
    let mut found = Vec::new();
    if app.is_dir("/var/lib/dpkg/info")? {
        for f in app.ls("/var/lib/dpkg/info")? {
            if let Some(pkg) = f.strip_suffix(".list") {
                let pkg = pkg.split(':').next().unwrap_or(pkg);
                if pkg.starts_with("open-vm-tools") && edit::is_safe_name(pkg) {
                    found.push(pkg.to_string());
                }
            }
        }
    }
    if app.exists("/usr/bin/rpm")? {
        if let Ok(out) = app.command(
            "listing VMware packages",
            &[
                "rpm",
                "-qa",
                "--qf",
                "%{NAME}\\n",
                "open-vm-tools*",
                "VMwareTools*",
            ],
        ) {
            found.extend(
                out.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && edit::is_safe_name(l))
                    .map(str::to_string),
            );
        }
    }
    for p in ["/etc/vmware-tools", "/usr/bin/vmware-uninstall-tools.pl"] {
        if app.exists(p)? && found.is_empty() {
            found.push(p.to_string());
        }
    }
    found.sort();
    found.dedup();
    Ok(found)
}
