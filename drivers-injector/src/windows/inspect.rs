//! What a Windows guest is, read offline from its NTFS root and registry before
//! anything is changed: product, version and build (from `CurrentBuildNumber`, since
//! libguestfs 1.48 names Windows 11 "win10" and Server 2025 "win2k16"), client or
//! server, architecture, system root, current control set, drive letters, static IP
//! settings, VMware Tools, and the states that make an offline edit unsafe —
//! hibernation, a Fast Startup session, BitLocker — which are refused.

use serde::{Deserialize, Serialize};

use super::registry::{Hive, RegValue};
use crate::appliance::{gerr, Appliance};
use crate::error::{Error, Result};

/// The BitLocker volume signature: the OEM id of its boot sector, at byte 3.
pub(crate) const BITLOCKER_OEM_ID: &[u8; 8] = b"-FVE-FS-";
/// Hibernation file signatures (first 4 bytes of `hiberfil.sys`) of a saved session,
/// as ntfs-3g checks them; a full shutdown leaves zeros.
pub(crate) const HIBERNATION_SIGNATURES: [&[u8; 4]; 4] = [b"hibr", b"HIBR", b"wake", b"WAKE"];
/// Most drive letters read from `MountedDevices` (A: to Z:).
const MAX_DRIVES: usize = 26;
/// Longest registry string carried into the report and the first-boot script.
const MAX_TEXT: usize = 256;
/// Most static interfaces restored at first boot.
const MAX_STATIC_NICS: usize = 32;
/// Most addresses per static interface.
const MAX_ADDRESSES: usize = 16;
/// The network adapter setup class.
pub(crate) const NET_CLASS_GUID: &str = "{4D36E972-E325-11CE-BFC1-08002BE10318}";

/// Where the Windows install is, before its registry is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    /// The appliance device of the NTFS volume holding `\Windows`.
    pub root: String,
    /// The system root's guest path with its on-disk case (`/Windows`).
    pub system_root: String,
    pub system_hive: String,
    pub software_hive: String,
    /// [`scan`] left it mounted read-only at `/`.
    pub mounted: bool,
}

/// What a scan of the disks found.
#[derive(Debug, Default)]
pub struct Scan {
    pub windows: Vec<Located>,
    /// Devices with a BitLocker signature.
    pub bitlocker: Vec<String>,
}

/// Looks at every NTFS filesystem (read-only) for a Windows system root, and at every
/// partition for a BitLocker signature. Unmounts everything before returning.
pub fn scan(app: &Appliance) -> Result<Scan> {
    let g = &app.g;
    let mut out = Scan::default();
    // Partitions and whole disks typed by blkid, not list_filesystems: that one also
    // scans LVM, MD and LDM, several seconds of appliance time under TCG, and Windows
    // never lives there.
    let mut parts = g.list_partitions().map_err(gerr("list_partitions"))?;
    parts.extend(g.list_devices().map_err(gerr("list_devices"))?);
    parts.sort();
    parts.dedup();
    let mut ntfs = Vec::new();
    for p in &parts {
        let head = g.pread_device(p, 16, 0).unwrap_or_default();
        let fstype = g.vfs_type(p).unwrap_or_default();
        if head.get(3..11) == Some(&BITLOCKER_OEM_ID[..])
            || fstype.eq_ignore_ascii_case("bitlocker")
        {
            out.bitlocker.push(p.clone());
        } else if fstype == "ntfs" {
            ntfs.push(p.clone());
        }
    }
    for dev in &ntfs {
        if g.mount_ro(dev, "/").is_err() {
            continue;
        }
        let sysroot = app
            .ls("/")?
            .into_iter()
            .find(|n| n.eq_ignore_ascii_case("Windows") || n.eq_ignore_ascii_case("WINNT"))
            .map(|n| format!("/{n}"));
        if let Some(sysroot) = sysroot {
            let hive = |name: &str| -> Option<String> {
                let dir =
                    ["System32", "config"]
                        .iter()
                        .try_fold(sysroot.clone(), |cur, comp| {
                            let n = app
                                .ls(&cur)
                                .ok()?
                                .into_iter()
                                .find(|n| n.eq_ignore_ascii_case(comp))?;
                            Some(format!("{cur}/{n}"))
                        })?;
                let n = app
                    .ls(&dir)
                    .ok()?
                    .into_iter()
                    .find(|n| n.eq_ignore_ascii_case(name))?;
                let p = format!("{dir}/{n}");
                app.is_file(&p).unwrap_or(false).then_some(p)
            };
            if let (Some(system_hive), Some(software_hive)) = (hive("SYSTEM"), hive("SOFTWARE")) {
                out.windows.push(Located {
                    root: dev.clone(),
                    system_root: sysroot,
                    system_hive,
                    software_hive,
                    mounted: false,
                });
                // Every NTFS filesystem is still looked at: a second Windows (a
                // multi-boot guest) must be refused, not silently left unconverted.
                // The last one scanned stays mounted read-only for the inspection when
                // it is the only Windows (one mount less under TCG).
                if out.windows.len() == 1 && Some(dev) == ntfs.last() {
                    out.windows[0].mounted = true;
                    return Ok(out);
                }
            }
        }
        g.umount_all().map_err(gerr("umount_all"))?;
    }
    Ok(out)
}

/// A drive letter and the appliance device it maps to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Drive {
    /// `C:`.
    pub letter: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// `mbr SIGNATURE@OFFSET` or `gpt GUID`, as MountedDevices says.
    pub mapping: String,
}

/// A static IPv4 configuration found on an interface, to restore at first boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct StaticIp {
    /// The Tcpip interface GUID on VMware.
    pub interface: String,
    /// Description of the adapter it belonged to, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapter: Option<String>,
    /// The connection's name (`Control\Network\{NIC class}\{GUID}\Connection\Name`).
    /// On VMware hardware 13+ Windows names a NIC after the firmware's device label,
    /// `EthernetN` for the VMX's `ethernetN`, unless someone renamed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection: Option<String>,
    pub addresses: Vec<String>,
    pub masks: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<String>,
    /// The MAC of the VM's NIC it is restored on: the NIC whose index the connection
    /// name gives (`EthernetN`), else paired by adapter install order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

/// An installed program's uninstall entry (VMware Tools).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Installed {
    pub key: String,
    pub display_name: String,
    /// The MSI product code, when it is an MSI install.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product_code: Option<String>,
}

/// The Windows inspection, recorded in `windows.json` and summarised in the
/// conversion log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct WindowsInspection {
    pub root: String,
    /// `ProductName` as the registry says it (Windows 11 still says "Windows 10").
    pub product_name: String,
    /// The name from version and build: "Windows Server 2019", "Windows 11".
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edition_id: Option<String>,
    /// `Client`, `Server` or `Server Core`.
    pub installation_type: String,
    pub server: bool,
    pub major: u32,
    pub minor: u32,
    pub build: u32,
    /// `x86_64`, `i386` or `aarch64`.
    pub arch: String,
    /// The virtio-win folder names: OS (`2k19`) and architecture (`amd64`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virtio_os: Option<String>,
    pub virtio_arch: String,
    /// `C:\Windows`.
    pub system_root: String,
    /// Its guest path in the appliance (`/Windows`).
    pub system_root_path: String,
    /// `ControlSet001`.
    pub control_set: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    pub drives: Vec<Drive>,
    /// `mbr` or `gpt` for the system disk.
    pub partition_table: String,
    /// The hardware clock is UTC (`RealTimeIsUniversal=1`); otherwise local time.
    pub rtc_utc: bool,
    /// `HiberbootEnabled=1`.
    pub fast_startup_enabled: bool,
    /// Windows 8 and later: `\DriverDatabase` exists in SYSTEM.
    pub driver_database: bool,
    pub static_ips: Vec<StaticIp>,
    pub vmware_tools: Vec<Installed>,
    /// VMware driver services present (`pvscsi`, `vmxnet3ndis6`...).
    pub vmware_services: Vec<String>,
    /// `DevicePath` in SOFTWARE.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_path: Option<String>,
    pub already_converted: bool,
}

/// The marker an injection leaves under the system root.
pub(crate) const MARKER: &str = "v2k/injected.json";

/// Windows' display name and virtio-win folder for a version and build.
pub(crate) fn windows_name(
    major: u32,
    minor: u32,
    build: u32,
    server: bool,
) -> (String, Option<&'static str>) {
    let (n, os) = match (major, minor, server) {
        (5, 1, _) => ("Windows XP", "xp"),
        (5, 2, _) => ("Windows Server 2003", "2k3"),
        (6, 0, false) => ("Windows Vista", "2k8"),
        (6, 0, true) => ("Windows Server 2008", "2k8"),
        (6, 1, false) => ("Windows 7", "w7"),
        (6, 1, true) => ("Windows Server 2008 R2", "2k8R2"),
        (6, 2, false) => ("Windows 8", "w8"),
        (6, 2, true) => ("Windows Server 2012", "2k12"),
        (6, 3, false) => ("Windows 8.1", "w8.1"),
        (6, 3, true) => ("Windows Server 2012 R2", "2k12R2"),
        // Builds, not names: ProductName of Windows 11 says "Windows 10".
        (10, 0, false) if build >= 22000 => ("Windows 11", "w11"),
        (10, 0, false) => ("Windows 10", "w10"),
        (10, 0, true) if build >= 26100 => ("Windows Server 2025", "2k25"),
        (10, 0, true) if build >= 20348 => ("Windows Server 2022", "2k22"),
        (10, 0, true) if build >= 17763 => ("Windows Server 2019", "2k19"),
        (10, 0, true) => ("Windows Server 2016", "2k16"),
        _ => return (format!("Windows {major}.{minor} build {build}"), None),
    };
    (n.to_string(), Some(os))
}

/// The first version whose guests v2k converts: its first-boot script needs
/// PowerShell 2.0 and pnputil `-i -a`, both in Windows 7 / Server 2008 R2.
pub(crate) const MIN_VERSION: (u32, u32) = (6, 1);

/// Digits of a build number string ("17763", "7601.win7sp1..."), bounded.
pub(crate) fn parse_build(s: &str) -> Option<u32> {
    let digits: String = s
        .trim()
        .chars()
        .take_while(char::is_ascii_digit)
        .take(9)
        .collect();
    digits.parse().ok()
}

/// "6.1" → (6, 1).
fn parse_version(s: &str) -> Option<(u32, u32)> {
    let (a, b) = s.trim().split_once('.')?;
    Some((parse_build(a)?, parse_build(b)?))
}

fn text(s: &str) -> String {
    crate::edit::printable(s).chars().take(MAX_TEXT).collect()
}

/// A dotted IPv4 address, strictly (it goes into a script).
pub(crate) fn is_ipv4(s: &str) -> bool {
    s.parse::<std::net::Ipv4Addr>().is_ok()
}

/// `{XXXXXXXX-XXXX-XXXX-XXXX-XXXXXXXXXXXX}`.
pub(crate) fn is_guid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 38
        && b[0] == b'{'
        && b[37] == b'}'
        && s[1..37].char_indices().all(|(i, c)| {
            if [8, 13, 18, 23].contains(&i) {
                c == '-'
            } else {
                c.is_ascii_hexdigit()
            }
        })
}

/// The MSI product code of an uninstall entry: the key name when it is a GUID, else
/// the GUID after `/X` or `/I` in `UninstallString`.
pub fn product_code(key: &str, uninstall: Option<&str>) -> Option<String> {
    if is_guid(key) {
        return Some(key.to_ascii_uppercase());
    }
    let u = uninstall?;
    let start = u.find('{')?;
    let cand = u.get(start..start + 38)?;
    is_guid(cand).then(|| cand.to_ascii_uppercase())
}

/// Mixed-endian GUID bytes (as Windows stores them) to text.
pub(crate) fn guid_from_bytes(b: &[u8]) -> Option<String> {
    if b.len() != 16 {
        return None;
    }
    let d1 = u32::from_le_bytes(b[0..4].try_into().ok()?);
    let d2 = u16::from_le_bytes(b[4..6].try_into().ok()?);
    let d3 = u16::from_le_bytes(b[6..8].try_into().ok()?);
    Some(format!(
        "{d1:08X}-{d2:04X}-{d3:04X}-{:02X}{:02X}-{:02X}{:02X}{:02X}{:02X}{:02X}{:02X}",
        b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]
    ))
}

/// Where a `MountedDevices` entry says a drive letter's volume is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum MountedDevice {
    /// An MBR partition: the disk's signature and the partition's byte offset.
    Mbr { signature: u32, offset: u64 },
    /// A GPT partition, by its partition GUID (upper case, no braces).
    Gpt { partition_guid: String },
}

/// Parses a `MountedDevices` entry: MBR (signature, byte offset) or GPT partition GUID.
/// `None` for any other kind of entry (a volume GUID path, a truncated value).
pub(crate) fn parse_mounted_device(data: &[u8]) -> Option<MountedDevice> {
    if data.len() == 12 {
        let signature = u32::from_le_bytes(data[0..4].try_into().ok()?);
        let offset = u64::from_le_bytes(data[4..12].try_into().ok()?);
        return Some(MountedDevice::Mbr { signature, offset });
    }
    if data.len() == 24 && &data[0..8] == b"DMIO:ID:" {
        return guid_from_bytes(&data[8..24])
            .map(|partition_guid| MountedDevice::Gpt { partition_guid });
    }
    None
}

/// Splits a `NameServer` value ("a,b" or "a b").
fn split_servers(s: &str) -> Vec<String> {
    s.split([',', ' '])
        .map(str::trim)
        .filter(|x| is_ipv4(x))
        .take(MAX_ADDRESSES)
        .map(str::to_string)
        .collect()
}

fn multi(v: Option<RegValue>) -> Vec<String> {
    match v {
        Some(RegValue::MultiSz(items)) => items
            .into_iter()
            .map(|s| s.trim().to_string())
            .filter(|s| is_ipv4(s))
            .take(MAX_ADDRESSES)
            .collect(),
        Some(RegValue::Sz(s)) => split_servers(&s),
        _ => Vec::new(),
    }
}

/// Reads everything, with the root mounted read-only at `/`. Refuses hibernated,
/// Fast Startup and unsupported guests, a missing control set or a damaged hive.
pub fn inspect(app: &Appliance, loc: &Located) -> Result<WindowsInspection> {
    let g = &app.g;

    // SOFTWARE: what Windows this is, and what is installed.
    let mut sw = Hive::open(app, "SOFTWARE", &loc.software_hive, false)?;
    let cv = ["Microsoft", "Windows NT", "CurrentVersion"];
    let product_name = sw
        .get_str(&cv, "ProductName")?
        .map(|s| text(&s))
        .unwrap_or_else(|| "Windows".into());
    let edition_id = sw.get_str(&cv, "EditionID")?.map(|s| text(&s));
    let installation_type = sw.get_str(&cv, "InstallationType")?.map(|s| text(&s));
    let (major, minor) = match (
        sw.get_dword(&cv, "CurrentMajorVersionNumber")?,
        sw.get_dword(&cv, "CurrentMinorVersionNumber")?,
    ) {
        (Some(a), Some(b)) => (a, b),
        _ => sw
            .get_str(&cv, "CurrentVersion")?
            .as_deref()
            .and_then(parse_version)
            .ok_or_else(|| Error::Hive {
                path: loc.software_hive.clone(),
                message: "no Windows version (CurrentMajorVersionNumber or CurrentVersion \
                          under Microsoft\\Windows NT\\CurrentVersion)"
                    .into(),
            })?,
    };
    let build = match sw.get_str(&cv, "CurrentBuildNumber")? {
        Some(b) => parse_build(&b),
        None => sw
            .get_str(&cv, "CurrentBuild")?
            .and_then(|b| parse_build(&b)),
    }
    .unwrap_or(0);
    let server = match installation_type.as_deref() {
        Some(t) => t.to_ascii_lowercase().contains("server"),
        None => product_name.to_ascii_lowercase().contains("server"),
    };
    let system_root = sw
        .get_str(&cv, "SystemRoot")?
        .map(|s| text(&s))
        .unwrap_or_else(|| format!("C:\\{}", loc.system_root.trim_start_matches('/')));
    let device_path = sw
        .get_str(&["Microsoft", "Windows", "CurrentVersion"], "DevicePath")?
        .map(|s| text(&s));
    let mut vmware_tools = Vec::new();
    for base in [
        &["Microsoft", "Windows", "CurrentVersion", "Uninstall"][..],
        &[
            "WOW6432Node",
            "Microsoft",
            "Windows",
            "CurrentVersion",
            "Uninstall",
        ][..],
    ] {
        let Some(node) = sw.node(base)? else { continue };
        for (key, child) in sw.subkeys(node)? {
            let name = sw.value_of(child, "DisplayName")?;
            let Some(name) = name.as_ref().and_then(|v| v.as_str()) else {
                continue;
            };
            if !name.to_ascii_lowercase().starts_with("vmware tools") {
                continue;
            }
            let un = sw.value_of(child, "UninstallString")?;
            vmware_tools.push(Installed {
                key: text(&key),
                display_name: text(name),
                product_code: product_code(&key, un.as_ref().and_then(|v| v.as_str())),
            });
        }
    }
    drop(sw);

    let (name, virtio_os) = windows_name(major, minor, build, server);
    if (major, minor) < MIN_VERSION {
        return Err(Error::Refused(format!(
            "{name} ({product_name}, {major}.{minor}): Windows before 7 / Server 2008 R2 is \
             not converted (the first-boot script needs PowerShell 2.0)"
        )));
    }

    // SYSTEM: control set, architecture, network, power and clock state.
    let mut sys = Hive::open(app, "SYSTEM", &loc.system_hive, false)?;
    let current = sys
        .get_dword(&["Select"], "Current")?
        .ok_or_else(|| Error::Hive {
            path: loc.system_hive.clone(),
            message: "no Select\\Current value: the current control set is unknown".into(),
        })?;
    if current == 0 || current > 999 {
        return Err(Error::Hive {
            path: loc.system_hive.clone(),
            message: format!("Select\\Current is {current}, not a control set number"),
        });
    }
    let control_set = format!("ControlSet{current:03}");
    if sys.node(&[&control_set])?.is_none() {
        return Err(Error::Hive {
            path: loc.system_hive.clone(),
            message: format!(
                "Select\\Current names {control_set}, which does not exist: the registry \
                 is damaged"
            ),
        });
    }
    let cs = control_set.as_str();
    let env_arch = sys.get_str(
        &[cs, "Control", "Session Manager", "Environment"],
        "PROCESSOR_ARCHITECTURE",
    )?;
    let (arch, virtio_arch) = match env_arch.as_deref().map(str::to_ascii_uppercase).as_deref() {
        Some("AMD64") => ("x86_64", "amd64"),
        Some("X86") => ("i386", "x86"),
        Some("ARM64") => ("aarch64", "ARM64"),
        _ => pe_arch(app, &loc.system_root),
    };
    let hostname = match sys.get_str(&[cs, "Services", "Tcpip", "Parameters"], "Hostname")? {
        Some(h) => Some(h),
        None => sys.get_str(
            &[cs, "Control", "ComputerName", "ComputerName"],
            "ComputerName",
        )?,
    }
    .map(|h| text(&h));
    let fast_startup_enabled = sys.get_dword(
        &[cs, "Control", "Session Manager", "Power"],
        "HiberbootEnabled",
    )? == Some(1);
    let rtc_utc = sys
        .get_dword(
            &[cs, "Control", "TimeZoneInformation"],
            "RealTimeIsUniversal",
        )?
        .is_some_and(|v| v != 0);
    let driver_database = sys.node(&["DriverDatabase"])?.is_some();
    let mut vmware_services = Vec::new();
    for svc in super::edits::VMWARE_SERVICES {
        if sys.node(&[cs, "Services", svc])?.is_some() {
            vmware_services.push(svc.to_string());
        }
    }
    let static_ips = static_ips(&mut sys, cs)?;
    let mut drives = Vec::new();
    if let Some(md) = sys.node(&["MountedDevices"])? {
        for (vname, val) in sys.values(md)? {
            let Some(letter) = vname
                .strip_prefix("\\DosDevices\\")
                .filter(|l| l.len() == 2 && l.ends_with(':'))
                .filter(|l| l.as_bytes()[0].is_ascii_alphabetic())
            else {
                continue;
            };
            let RegValue::Binary(data) = val else {
                continue;
            };
            let Some(parsed) = parse_mounted_device(&data) else {
                continue;
            };
            if drives.len() == MAX_DRIVES {
                break;
            }
            let (mapping, device) = match parsed {
                MountedDevice::Mbr { signature, offset } => (
                    format!("mbr {signature:08x}@{offset}"),
                    mbr_device(app, signature, offset),
                ),
                MountedDevice::Gpt { partition_guid } => (
                    format!("gpt {partition_guid}"),
                    gpt_device(app, &partition_guid),
                ),
            };
            drives.push(Drive {
                letter: letter.to_ascii_uppercase(),
                device,
                mapping,
            });
        }
    }
    drives.sort_by(|a, b| a.letter.cmp(&b.letter));
    drop(sys);

    // Hibernation: a saved session in hiberfil.sys means the volume's state lives in
    // memory; writing to it offline loses data, and Windows would resume over it.
    let hiber = g
        .case_sensitive_path("/hiberfil.sys")
        .ok()
        .filter(|p| app.is_file(p).unwrap_or(false));
    if let Some(h) = hiber {
        let head = g.pread(&h, 4, 0).map_err(gerr("reading /hiberfil.sys"))?;
        if HIBERNATION_SIGNATURES.iter().any(|s| head == s[..]) {
            return Err(Error::Refused(if fast_startup_enabled {
                format!(
                    "{name} was shut down with Fast Startup: its kernel session is saved in \
                     hiberfil.sys and the disk is not consistent. Boot it on VMware, run \
                     `powercfg /h off` (or shut down with `shutdown /s /t 0`), then migrate"
                )
            } else {
                format!(
                    "{name} is hibernated (hiberfil.sys holds a saved session): resume it on \
                     VMware and shut it down fully, then migrate"
                )
            }));
        }
    }
    let partition_table = g
        .list_devices()
        .ok()
        .and_then(|d| d.first().cloned())
        .and_then(|d| g.part_get_parttype(&d).ok())
        .unwrap_or_else(|| "unknown".into());
    let marker = format!("{}/{MARKER}", loc.system_root);
    Ok(WindowsInspection {
        root: loc.root.clone(),
        product_name,
        name,
        edition_id,
        installation_type: installation_type
            .unwrap_or_else(|| String::from(if server { "Server" } else { "Client" })),
        server,
        major,
        minor,
        build,
        arch: arch.into(),
        virtio_os: virtio_os.map(str::to_string),
        virtio_arch: virtio_arch.into(),
        system_root,
        system_root_path: loc.system_root.clone(),
        control_set,
        hostname,
        drives,
        partition_table,
        rtc_utc,
        fast_startup_enabled,
        driver_database,
        static_ips,
        vmware_tools,
        vmware_services,
        device_path,
        already_converted: app.is_file(&marker).unwrap_or(false),
    })
}

/// Architecture from cmd.exe's PE header when the registry does not say.
fn pe_arch(app: &Appliance, sysroot: &str) -> (&'static str, &'static str) {
    let g = &app.g;
    let path = g
        .case_sensitive_path(&format!("{sysroot}/System32/cmd.exe"))
        .unwrap_or_default();
    let head = g.pread(&path, 512, 0).unwrap_or_default();
    let lfanew = head
        .get(0x3C..0x40)
        .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize);
    let machine = lfanew
        .and_then(|o| o.checked_add(4))
        .and_then(|o| head.get(o..o.checked_add(2)?))
        .map(|b| u16::from_le_bytes([b[0], b[1]]));
    match machine {
        Some(0x014c) => ("i386", "x86"),
        Some(0xAA64) => ("aarch64", "ARM64"),
        _ => ("x86_64", "amd64"),
    }
}

/// The partition of the disk with MBR signature `sig` starting at byte `off`.
fn mbr_device(app: &Appliance, sig: u32, off: u64) -> Option<String> {
    let g = &app.g;
    for dev in g.list_devices().ok()? {
        let s = g.pread_device(&dev, 4, 440).ok()?;
        if s.len() != 4 || u32::from_le_bytes(s[..4].try_into().ok()?) != sig {
            continue;
        }
        for p in g.part_list(&dev).ok()? {
            if p.part_start == off {
                return Some(format!("{dev}{}", p.part_num));
            }
        }
    }
    None
}

/// The GPT partition with unique GUID `guid`.
fn gpt_device(app: &Appliance, guid: &str) -> Option<String> {
    let g = &app.g;
    for dev in g.list_devices().ok()? {
        for p in g.part_list(&dev).unwrap_or_default() {
            if g.part_get_gpt_guid(&dev, p.part_num)
                .is_ok_and(|x| x.eq_ignore_ascii_case(guid))
            {
                return Some(format!("{dev}{}", p.part_num));
            }
        }
    }
    None
}

/// Interfaces with DHCP off and an address, ordered by their adapter's class index
/// (the install order, which follows VMware's ethernetN order for a plain install).
fn static_ips(sys: &mut Hive, cs: &str) -> Result<Vec<StaticIp>> {
    let mut order: Vec<(String, String, String)> = Vec::new(); // (index, guid, desc)
    if let Some(class) = sys.node(&[cs, "Control", "Class", NET_CLASS_GUID])? {
        for (idx, node) in sys.subkeys(class)? {
            let id = sys.value_of(node, "NetCfgInstanceId")?;
            if let Some(id) = id.as_ref().and_then(|v| v.as_str()) {
                let desc = sys
                    .value_of(node, "DriverDesc")?
                    .and_then(|v| v.as_str().map(text))
                    .unwrap_or_default();
                order.push((idx, id.to_ascii_uppercase(), desc));
            }
        }
    }
    let mut out = Vec::new();
    let Some(ifs) = sys.node(&[cs, "Services", "Tcpip", "Parameters", "Interfaces"])? else {
        return Ok(out);
    };
    for (guid, node) in sys.subkeys(ifs)? {
        if !is_guid(&guid)
            || sys.value_of(node, "EnableDHCP")?.and_then(|v| v.as_dword()) != Some(0)
        {
            continue;
        }
        let addresses = multi(sys.value_of(node, "IPAddress")?);
        let masks = multi(sys.value_of(node, "SubnetMask")?);
        if addresses.is_empty()
            || addresses.iter().all(|a| a == "0.0.0.0")
            || masks.len() != addresses.len()
        {
            continue;
        }
        let mut dns = multi(sys.value_of(node, "NameServer")?);
        if dns.is_empty() {
            dns = multi(sys.value_of(node, "DhcpNameServer")?);
        }
        let adapter = order
            .iter()
            .find(|(_, id, _)| id.eq_ignore_ascii_case(&guid))
            .map(|(_, _, d)| d.clone());
        let connection = match sys.node(&[
            cs,
            "Control",
            "Network",
            NET_CLASS_GUID,
            &guid,
            "Connection",
        ])? {
            Some(n) => sys
                .value_of(n, "Name")?
                .and_then(|v| v.as_str().map(text))
                .filter(|n| !n.is_empty()),
            None => None,
        };
        out.push(StaticIp {
            interface: guid.to_ascii_uppercase(),
            adapter,
            connection,
            addresses,
            masks,
            gateways: multi(sys.value_of(node, "DefaultGateway")?),
            dns,
            mac: None,
        });
        if out.len() == MAX_STATIC_NICS {
            break;
        }
    }
    let rank = |g: &str| {
        order
            .iter()
            .position(|(_, id, _)| id.eq_ignore_ascii_case(g))
            .unwrap_or(usize::MAX)
    };
    out.sort_by(|a, b| {
        rank(&a.interface)
            .cmp(&rank(&b.interface))
            .then(a.interface.cmp(&b.interface))
    });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_versions_from_the_build_not_the_product_name() {
        assert_eq!(windows_name(10, 0, 22631, false).0, "Windows 11");
        assert_eq!(windows_name(10, 0, 22631, false).1, Some("w11"));
        assert_eq!(windows_name(10, 0, 19045, false).1, Some("w10"));
        assert_eq!(windows_name(10, 0, 26100, true).0, "Windows Server 2025");
        assert_eq!(windows_name(10, 0, 20348, true).1, Some("2k22"));
        assert_eq!(windows_name(10, 0, 17763, true).1, Some("2k19"));
        assert_eq!(windows_name(10, 0, 14393, true).1, Some("2k16"));
        assert_eq!(windows_name(6, 1, 7601, false).1, Some("w7"));
        assert_eq!(windows_name(6, 1, 7601, true).1, Some("2k8R2"));
        assert_eq!(windows_name(6, 3, 9600, true).1, Some("2k12R2"));
        assert_eq!(windows_name(11, 0, 1, false).1, None);
    }

    #[test]
    fn parses_builds_and_versions_defensively() {
        assert_eq!(parse_build("17763"), Some(17763));
        assert_eq!(parse_build(" 7601.win7sp1_ldr"), Some(7601));
        assert_eq!(parse_build("x"), None);
        assert_eq!(parse_build("99999999999999999999"), Some(999_999_999));
        assert_eq!(parse_version("6.1"), Some((6, 1)));
        assert_eq!(parse_version("61"), None);
    }

    #[test]
    fn finds_msi_product_codes() {
        let g = "{3B410500-1802-488E-9EF1-4B11992E0440}";
        assert_eq!(product_code(g, None).as_deref(), Some(g));
        assert_eq!(
            product_code("VMware Tools", Some(&format!("MsiExec.exe /X{g}"))).as_deref(),
            Some(g)
        );
        assert_eq!(product_code("x", Some("C:\\uninst.exe /S")), None);
        assert_eq!(product_code("x", Some("{short}")), None);
        assert!(!is_guid("{3B410500-1802-488E-9EF1-4B11992E044}"));
    }

    #[test]
    fn parses_mounted_devices_entries() {
        let mut mbr = 0x5632_4b21u32.to_le_bytes().to_vec();
        mbr.extend(1_048_576u64.to_le_bytes());
        assert_eq!(
            parse_mounted_device(&mbr),
            Some(MountedDevice::Mbr {
                signature: 0x5632_4b21,
                offset: 1_048_576
            })
        );
        let mut gpt = b"DMIO:ID:".to_vec();
        gpt.extend([
            0x33, 0x22, 0x11, 0x00, 0x55, 0x44, 0x77, 0x66, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd,
            0xee, 0xff,
        ]);
        assert_eq!(
            parse_mounted_device(&gpt),
            Some(MountedDevice::Gpt {
                partition_guid: "00112233-4455-6677-8899-AABBCCDDEEFF".into()
            })
        );
        assert_eq!(parse_mounted_device(b"short"), None);
    }

    #[test]
    fn keeps_only_ipv4_addresses() {
        assert_eq!(
            split_servers("192.0.2.53, 192.0.2.54 x;rm"),
            ["192.0.2.53", "192.0.2.54"]
        );
        assert!(!is_ipv4("1.2.3.4'; Remove-Item"));
    }
}
