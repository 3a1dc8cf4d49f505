//! The changes to a Linux guest, made inside the appliance with the guest's own tools:
//! VMware Tools removed, NIC names pinned to MACs, block devices renamed for the target
//! bus, initramfs rebuilt with virtio drivers, GRUB regenerated, the first-boot agent
//! installed, SELinux relabel scheduled. Each step compares before and after and
//! records a [`Change`] only when it changed something, so a second run on its own
//! output records none (idempotence, SECURITY.md "Guest modification").

use serde::{Deserialize, Serialize};

use crate::agent;
use crate::appliance::{gerr, Appliance};
use crate::edit::{self, DiskBus};
use crate::error::{Error, Result};
use crate::inspect::{InitramfsTool, Inspection, MARKER};
use crate::log::{Change, NicPin, Unchanged};

/// Modules added to every initramfs (virt-v2v's list, FIELD-NOTES §2).
pub const INITRAMFS_MODULES: [&str; 6] = [
    "virtio",
    "virtio_ring",
    "virtio_pci",
    "virtio_blk",
    "virtio_scsi",
    "virtio_net",
];

/// Suffix of the backup kept of each initramfs before its rebuild.
pub const BACKUP_SUFFIX: &str = ".pre-v2k";

/// Interface names that are not physical NICs and are never pinned to a MAC.
const VIRTUAL_NIC_PREFIXES: [&str; 10] = [
    "br", "bond", "team", "vlan", "virbr", "docker", "tun", "tap", "veth", "wg",
];

/// The marker a conversion leaves in the guest: what a re-run compares against.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Marker {
    pub tool: String,
    pub disk_bus: String,
    /// Each rebuilt initramfs with its size and mtime after our rebuild.
    pub initramfs: Vec<(String, i64, i64)>,
    /// The agent was installed (it deletes itself after reporting).
    pub agent_installed: bool,
}

/// What the steps produce.
#[derive(Default)]
pub struct Outcome {
    pub changes: Vec<Change>,
    pub unchanged: Vec<Unchanged>,
    pub warnings: Vec<String>,
}

impl Outcome {
    fn same(&mut self, step: &str, reason: impl Into<String>) {
        self.unchanged.push(Unchanged {
            step: step.into(),
            reason: reason.into(),
        });
    }
}

/// Settings of one conversion.
pub struct Plan<'a> {
    pub bus: DiskBus,
    pub keep_agent: bool,
    pub pins: &'a [NicPin],
    /// VMware `/dev/disk/by-id/` names and the target's
    /// ([`v2k_kvm_target::by_id_renames`]).
    pub by_id: &'a [(String, String)],
    /// VMware WWIDs and the target's identifiers
    /// ([`v2k_kvm_target::wwid_renames`]).
    pub wwids: &'a [(String, String)],
}

/// The most files of one directory (udev rules, multipath's conf.d) the injector
/// reads for disk names: the guest decides how many there are.
const MAX_CONFIG_FILES: usize = 256;

/// Refuses, before any change, a guest this code cannot make boot on `bus`.
pub fn check(insp: &Inspection, bus: DiskBus) -> Result<()> {
    let scsi = bus == DiskBus::VirtioScsi;
    if insp.kernels.is_empty() {
        return Err(Error::Refused(
            "no installed kernel found (/lib/modules/<version> with a /boot/vmlinuz-<version>)"
                .into(),
        ));
    }
    if !insp.kernels.iter().any(|k| k.virtio_capable(scsi)) {
        let list: Vec<&str> = insp.kernels.iter().map(|k| k.version.as_str()).collect();
        return Err(Error::Refused(format!(
            "no installed kernel has the virtio drivers needed to boot on {} ({}); install \
             a newer kernel on the source VM first",
            if scsi { "virtio-scsi" } else { "virtio-blk" },
            list.join(", ")
        )));
    }
    let needs_rebuild = insp.kernels.iter().any(|k| {
        k.initramfs.is_some()
            && k.virtio
                .values()
                .any(|p| *p == crate::inspect::Presence::Module)
    });
    if needs_rebuild && insp.initramfs_tool.is_none() {
        return Err(Error::Refused(
            "kernels load virtio as modules but no initramfs generator (initramfs-tools, \
             dracut, mkinitrd) is installed to add them"
                .into(),
        ));
    }
    if insp.bootloader.kind == "unknown" {
        return Err(Error::Refused(
            "no GRUB configuration found (/boot/grub/grub.cfg, /boot/grub2/grub.cfg)".into(),
        ));
    }
    Ok(())
}

/// Pairs the guest's configured NIC names with the VM's MACs: a configuration that
/// names a MAC wins; the others are paired in order of appearance with the remaining
/// NICs in `ethernetN` order.
pub fn plan_pins(
    model_macs: &[String],
    configured: &[crate::inspect::ConfiguredNic],
) -> (Vec<NicPin>, Vec<String>) {
    let mut pins = Vec::new();
    let mut warnings = Vec::new();
    let physical: Vec<&crate::inspect::ConfiguredNic> = configured
        .iter()
        .filter(|c| !VIRTUAL_NIC_PREFIXES.iter().any(|p| c.name.starts_with(p)))
        .collect();
    let mut free_macs: Vec<&String> = model_macs.iter().collect();
    let mut unnamed = Vec::new();
    for c in &physical {
        match c
            .mac
            .as_ref()
            .and_then(|m| free_macs.iter().position(|x| *x == m))
        {
            Some(i) => {
                let mac = free_macs.remove(i);
                pins.push(NicPin {
                    name: c.name.clone(),
                    mac: mac.clone(),
                    source: "config-mac".into(),
                });
            }
            None => unnamed.push(*c),
        }
    }
    for c in unnamed {
        if pins.iter().any(|p| p.name == c.name) {
            continue;
        }
        if free_macs.is_empty() {
            warnings.push(format!(
                "{} names interface {} but the VM has no NIC left for it",
                c.file, c.name
            ));
            continue;
        }
        let mac = free_macs.remove(0);
        pins.push(NicPin {
            name: c.name.clone(),
            mac: mac.clone(),
            source: "config-order".into(),
        });
    }
    for mac in free_macs {
        warnings.push(format!(
            "NIC {mac}: no interface name found in the guest's network configuration; it \
             keeps the name the kernel gives it on KVM"
        ));
    }
    for p in &pins {
        if p.name.starts_with("eth") {
            warnings.push(format!(
                "{} is in the kernel's own ethN namespace: renaming to it can race with \
                 kernel names on a multi-NIC guest",
                p.name
            ));
        }
    }
    (pins, warnings)
}

/// Writes `content` to `path` when it differs, recording the change.
fn put(app: &Appliance, out: &mut Outcome, step: &str, path: &str, content: &str) -> Result<bool> {
    let old = app.read_opt(path)?;
    if old.as_deref() == Some(content) {
        out.same(step, format!("{path} already as wanted"));
        return Ok(false);
    }
    if let Some(dir) = path
        .rsplit_once('/')
        .map(|(d, _)| d)
        .filter(|d| !d.is_empty())
    {
        app.g
            .mkdir_p(dir)
            .map_err(gerr(format!("mkdir -p {dir}")))?;
    }
    app.write(path, content)?;
    let (before, after) = edit::excerpt(old.as_deref().unwrap_or(""), content);
    out.changes.push(Change {
        step: step.into(),
        file: path.into(),
        action: if old.is_some() { "edited" } else { "created" }.into(),
        before,
        after,
        command: None,
        seconds: None,
    });
    Ok(true)
}

/// Applies `f` to a file's text when the file exists.
fn edit_file(
    app: &Appliance,
    out: &mut Outcome,
    step: &str,
    path: &str,
    f: impl Fn(&str) -> String,
) -> Result<bool> {
    match app.read_opt(path)? {
        Some(old) => {
            let new = f(&old);
            put(app, out, step, path, &new)
        }
        None => Ok(false),
    }
}

/// Runs every step.
pub fn apply(app: &Appliance, insp: &Inspection, plan: &Plan) -> Result<Outcome> {
    let mut out = Outcome::default();
    let old_marker: Option<Marker> = app
        .read_opt(MARKER)?
        .and_then(|t| serde_json::from_str(&t).ok());

    pin_nics(app, plan.pins, &mut out)?;

    // Block device names for the target bus, and VMware's by-id names for the
    // target's (each rewrite is a Change in the conversion log).
    let bus = plan.bus;
    let by_id = plan.by_id;
    edit_file(app, &mut out, "fstab", "/etc/fstab", |t| {
        edit::rename_by_id(&edit::rename_in_table(t, bus), by_id)
    })?;
    edit_file(app, &mut out, "crypttab", "/etc/crypttab", |t| {
        edit::rename_by_id(&edit::rename_in_table(t, bus), by_id)
    })?;
    let grub_default_changed =
        edit_file(app, &mut out, "default-grub", "/etc/default/grub", |t| {
            edit::rename_by_id(&edit::rename_in_default_grub(t, bus), by_id)
        })?;
    // An LVM filter naming VMware's disks would hide them all on the target.
    edit_file(app, &mut out, "lvm-filter", "/etc/lvm/lvm.conf", |t| {
        edit::rename_by_id(t, by_id)
    })?;
    // Multipath and udev rules (Oracle ASM's among them) name disks by WWID or by-id
    // path: both rewritten to what the target's disks are called.
    let ids = |t: &str| edit::rename_wwid(&edit::rename_by_id(t, by_id), plan.wwids);
    if !by_id.is_empty() {
        let mut files: Vec<String> = [
            "/etc/multipath.conf",
            "/etc/multipath/wwids",
            "/etc/multipath/bindings",
        ]
        .map(String::from)
        .to_vec();
        for (dir, ext) in [
            ("/etc/multipath/conf.d", ".conf"),
            ("/etc/udev/rules.d", ".rules"),
        ] {
            let mut names: Vec<String> = app
                .ls(dir)?
                .into_iter()
                .filter(|n| n.ends_with(ext) && edit::is_safe_name(n))
                .collect();
            names.sort();
            names.truncate(MAX_CONFIG_FILES);
            files.extend(names.into_iter().map(|n| format!("{dir}/{n}")));
        }
        for f in files {
            let step = if f.contains("udev") {
                "udev-rules"
            } else {
                "multipath"
            };
            if app.is_file(&f)? {
                edit_file(app, &mut out, step, &f, ids)?;
            }
        }
    }
    for map in ["/boot/grub/device.map", "/boot/grub2/device.map"] {
        edit_file(app, &mut out, "device-map", map, |t| {
            edit::rename_in_table(t, bus)
        })?;
    }

    disable_vmware_repos_and_drivers(app, &mut out)?;

    // The three slow steps run inside the guest at the same time (they touch
    // different files): package removal, initramfs rebuilds, GRUB regeneration.
    let tools = plan_tools_removal(insp, &mut out);
    let initramfs = plan_initramfs(app, insp, old_marker.as_ref(), &mut out)?;
    let grub = plan_grub(
        app,
        insp,
        bus,
        by_id,
        grub_default_changed || !initramfs.is_empty(),
    )?;
    let mut jobs: Vec<Vec<String>> = Vec::new();
    if let Some((argv, _)) = &tools {
        jobs.push(argv.clone());
    }
    jobs.extend(initramfs.iter().map(|p| p.argv.clone()));
    if let Some(argv) = grub.as_ref().and_then(|g| g.argv.clone()) {
        jobs.push(argv);
    }
    let mut results = app
        .run_together("running the guest's own tools", &jobs)?
        .into_iter();
    if let Some((argv, pkgs)) = tools {
        finish_tools_removal(&argv, &pkgs, results.next(), &mut out);
    }
    disable_tool_units(app, &mut out)?;
    let rebuilt_results: Vec<_> = results.by_ref().take(initramfs.len()).collect();
    let rebuilt = finish_initramfs(app, initramfs, rebuilt_results, &mut out)?;
    if let Some(g) = grub {
        let r = if g.argv.is_some() {
            results.next()
        } else {
            None
        };
        finish_grub(app, g, r, (bus, by_id), &mut out)?;
    }

    // A UEFI guest boots on KVM from a fresh variable store: it needs the
    // removable-media loader (crate::efi).
    if insp.bootloader.kind == "grub2-efi" {
        crate::efi::install_fallback(app, &mut out.changes)?;
    }

    let agent_installed = install_agent(
        app,
        plan.keep_agent,
        &insp.enabled_services,
        old_marker.as_ref(),
        &mut out,
    )?;

    if !out.changes.is_empty()
        && matches!(
            insp.selinux.as_deref(),
            Some("enforcing") | Some("permissive")
        )
    {
        put(app, &mut out, "selinux-relabel", "/.autorelabel", "")?;
    }

    let mut initramfs = old_marker
        .as_ref()
        .map(|m| m.initramfs.clone())
        .unwrap_or_default();
    for (path, size, mtime) in rebuilt {
        initramfs.retain(|(p, _, _)| *p != path);
        initramfs.push((path, size, mtime));
    }
    let marker = Marker {
        tool: "v2k inject".into(),
        disk_bus: bus.name().into(),
        initramfs,
        agent_installed,
    };
    let text = serde_json::to_string_pretty(&marker).expect("marker serialises") + "\n";
    let before = out.changes.len();
    put(app, &mut out, "marker", MARKER, &text)?;
    // The marker alone changing (e.g. its format) does not make a conversion.
    if out.changes.len() > before && before == 0 && old_marker.is_some() {
        out.changes.pop();
        app.write(MARKER, &text)?;
    }
    Ok(out)
}

/// The package removal command for the guest's VMware Tools packages, if any.
fn plan_tools_removal(insp: &Inspection, out: &mut Outcome) -> Option<(Vec<String>, Vec<String>)> {
    let pkgs: Vec<String> = insp
        .vmware_tools
        .iter()
        .filter(|p| !p.starts_with('/'))
        .cloned()
        .collect();
    if pkgs.is_empty() {
        out.same("vmware-tools", "no VMware Tools package installed");
        return None;
    }
    // Offline: maintainer scripts see no running systemd and skip service calls.
    let mut argv: Vec<String> = match insp.package_format.as_str() {
        "deb" => vec!["dpkg".into(), "--purge".into(), "--force-depends".into()],
        "rpm" => vec!["rpm".into(), "-e".into(), "--nodeps".into()],
        other => {
            out.warnings.push(format!(
                "VMware Tools packages {} not removed: package format {other:?} unknown",
                pkgs.join(" ")
            ));
            return None;
        }
    };
    argv.extend(pkgs.iter().cloned());
    Some((argv, pkgs))
}

/// VMware-only package repositories disabled (apt, yum/dnf, zypper) and VMware-only
/// out-of-tree drivers blacklisted; each file changed is recorded.
fn disable_vmware_repos_and_drivers(app: &Appliance, out: &mut Outcome) -> Result<()> {
    let mut apt_lines = vec!["/etc/apt/sources.list".to_string()];
    apt_lines.extend(app.glob("/etc/apt/sources.list.d/*.list")?);
    for f in apt_lines {
        edit_file(app, out, "vmware-repo", &f, edit::disable_vmware_apt_lines)?;
    }
    for f in app.glob("/etc/apt/sources.list.d/*.sources")? {
        edit_file(app, out, "vmware-repo", &f, edit::disable_vmware_deb822)?;
    }
    let mut ini = app.glob("/etc/yum.repos.d/*.repo")?;
    ini.extend(app.glob("/etc/zypp/repos.d/*.repo")?);
    for f in ini {
        edit_file(app, out, "vmware-repo", &f, edit::disable_vmware_ini_repos)?;
    }
    let mut found = Vec::new();
    for dir in ["misc", "updates", "extra"] {
        for f in app.glob(&format!("/lib/modules/*/{dir}/*.ko*"))? {
            let name = f.rsplit('/').next().unwrap_or("");
            let module = name.split(".ko").next().unwrap_or("");
            if edit::VMWARE_ONLY_MODULES.contains(&module) && !found.iter().any(|m| m == module) {
                found.push(module.to_string());
            }
        }
    }
    if found.is_empty() {
        out.same("vmware-drivers", "no VMware-only driver installed");
    } else {
        found.sort();
        put(
            app,
            out,
            "vmware-drivers",
            "/etc/modprobe.d/v2k-vmware-blacklist.conf",
            &edit::vmware_module_blacklist(&found),
        )?;
    }
    Ok(())
}

/// The last lines of a program's output, for a message.
fn tail_of(output: &str) -> String {
    let lines: Vec<&str> = output.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(8)..].join(" | ")
}

fn finish_tools_removal(
    argv: &[String],
    pkgs: &[String],
    result: Option<crate::appliance::JobOutcome>,
    out: &mut Outcome,
) {
    match result {
        Some(r) if r.ok => out.changes.push(Change {
            step: "vmware-tools".into(),
            file: pkgs.join(" "),
            action: "purged".into(),
            before: format!("installed: {}", pkgs.join(" ")),
            after: "removed".into(),
            command: Some(argv.join(" ")),
            seconds: Some(r.seconds),
        }),
        Some(r) => out.warnings.push(format!(
            "removing VMware Tools failed ({}: {}); disabling its units instead",
            argv.join(" "),
            tail_of(&r.output)
        )),
        None => out.warnings.push(format!(
            "removing VMware Tools did not run ({}); disabling its units instead",
            argv.join(" ")
        )),
    }
}

/// Whatever is left of VMware Tools (a tarball install, a failed purge): at least
/// not started.
fn disable_tool_units(app: &Appliance, out: &mut Outcome) -> Result<()> {
    for &unit in crate::inspect::VMWARE_TOOL_UNITS {
        for wants in app.glob("/etc/systemd/system/*.wants")? {
            let link = format!("{}/{unit}", wants.trim_end_matches('/'));
            if app.g.is_symlink(&link).unwrap_or(false) {
                app.g.rm(&link).map_err(gerr(format!("rm {link}")))?;
                out.changes.push(Change {
                    step: "vmware-tools".into(),
                    file: link,
                    action: "disabled".into(),
                    before: "enabled".into(),
                    after: String::new(),
                    command: None,
                    seconds: None,
                });
            }
        }
    }
    Ok(())
}

fn pin_nics(app: &Appliance, pins: &[NicPin], out: &mut Outcome) -> Result<()> {
    if pins.is_empty() {
        out.same("nic-pin", "no NIC name to pin");
        return Ok(());
    }
    let mut rules =
        String::from("# Written by v2k inject: keep each NIC's VMware-era name on KVM, by MAC.\n");
    for p in pins {
        // Both values were checked (is_safe_name, is_mac) before reaching here.
        let link = format!(
            "# Written by v2k inject: keep the VMware-era name of this NIC on KVM.\n\
             [Match]\nMACAddress={}\n\n[Link]\nName={}\n",
            p.mac, p.name
        );
        put(
            app,
            out,
            "nic-pin",
            &format!("/etc/systemd/network/10-v2k-{}.link", p.name),
            &link,
        )?;
        rules.push_str(&format!(
            "SUBSYSTEM==\"net\", ACTION==\"add\", DRIVERS==\"?*\", ATTR{{address}}==\"{}\", ATTR{{type}}==\"1\", NAME=\"{}\"\n",
            p.mac, p.name
        ));
    }
    put(
        app,
        out,
        "nic-pin",
        "/etc/udev/rules.d/70-v2k-persistent-net.rules",
        &rules,
    )?;
    Ok(())
}

fn stat_of(app: &Appliance, path: &str) -> Result<(i64, i64)> {
    let st = app.g.statns(path).map_err(gerr(format!("stat {path}")))?;
    Ok((st.st_size, st.st_mtime_sec))
}

/// One initramfs to rebuild: the image, its size before, the guest command.
struct InitramfsJob {
    img: String,
    version: String,
    size_before: i64,
    argv: Vec<String>,
}

/// Prepares the rebuild of the initramfs of every kernel that has one (module list
/// edited, old image backed up), unless the marker shows our own rebuild is still in
/// place. The rebuilds themselves run in [`apply`]'s batch.
fn plan_initramfs(
    app: &Appliance,
    insp: &Inspection,
    marker: Option<&Marker>,
    out: &mut Outcome,
) -> Result<Vec<InitramfsJob>> {
    let Some(tool) = insp.initramfs_tool else {
        out.same(
            "initramfs",
            "no initramfs generator; kernels have virtio built in",
        );
        return Ok(Vec::new());
    };
    if tool == InitramfsTool::InitramfsTools {
        // MODULES=most already takes every block driver, =dep only the appliance's, and
        // =list only what the file names: adding them to the file covers all three.
        edit_file(app, out, "initramfs", "/etc/initramfs-tools/modules", |t| {
            edit::ensure_modules(t, &INITRAMFS_MODULES)
        })?;
        if !app.exists("/etc/initramfs-tools/modules")? {
            put(
                app,
                out,
                "initramfs",
                "/etc/initramfs-tools/modules",
                &edit::ensure_modules("", &INITRAMFS_MODULES),
            )?;
        }
    }
    let mut jobs = Vec::new();
    for k in &insp.kernels {
        let Some(img) = &k.initramfs else { continue };
        if !k
            .virtio
            .values()
            .any(|p| *p == crate::inspect::Presence::Module)
        {
            out.same(
                "initramfs",
                format!("{}: virtio is built into the kernel", k.version),
            );
            continue;
        }
        let now = stat_of(app, img)?;
        if let Some(m) = marker {
            if m.initramfs
                .iter()
                .any(|(p, s, t)| p == img && (*s, *t) == now)
            {
                out.same(
                    "initramfs",
                    format!("{img} is v2k's own rebuild, unchanged since"),
                );
                continue;
            }
        }
        let backup = format!("{img}{BACKUP_SUFFIX}");
        if !app.exists(&backup)? {
            app.g
                .cp_a(img, &backup)
                .map_err(gerr(format!("backing up {img}")))?;
            out.changes.push(Change {
                step: "initramfs".into(),
                file: backup.clone(),
                action: "backed-up".into(),
                before: String::new(),
                after: format!("copy of {img}"),
                command: None,
                seconds: None,
            });
        }
        let v = k.version.as_str();
        let drivers = INITRAMFS_MODULES.join(" ");
        let argv: Vec<&str> = match tool {
            InitramfsTool::InitramfsTools => vec!["update-initramfs", "-u", "-k", v],
            // The guest's own host-only setting is kept, as virt-v2v does: the drivers
            // are added explicitly, and the appliance's root layout (same LVM names)
            // is what host-only detects. A generic (--no-hostonly) image took over
            // 130 s to build under TCG here, against seconds for host-only.
            InitramfsTool::Dracut => vec!["dracut", "--force", "--add-drivers", &drivers, img, v],
            InitramfsTool::SuseMkinitrd => {
                vec!["mkinitrd", "-m", &drivers, "-k", &k.image, "-i", img]
            }
        };
        jobs.push(InitramfsJob {
            img: img.clone(),
            version: v.to_string(),
            size_before: now.0,
            argv: argv.iter().map(|w| w.to_string()).collect(),
        });
    }
    Ok(jobs)
}

/// Records the rebuilds; a failed one is an error (the guest would not boot on
/// virtio). Returns the rebuilt images with their new stat, for the marker.
fn finish_initramfs(
    app: &Appliance,
    jobs: Vec<InitramfsJob>,
    results: Vec<crate::appliance::JobOutcome>,
    out: &mut Outcome,
) -> Result<Vec<(String, i64, i64)>> {
    let mut rebuilt = Vec::new();
    let drivers = INITRAMFS_MODULES.join(" ");
    let mut results = results.into_iter();
    for j in jobs {
        let what = format!("rebuilding the initramfs of {}", j.version);
        let r = results.next().ok_or_else(|| Error::GuestTool {
            what: what.clone(),
            message: "did not run".into(),
        })?;
        if !r.ok {
            return Err(Error::GuestTool {
                what,
                message: format!("{} failed: {}", j.argv.join(" "), tail_of(&r.output)),
            });
        }
        let after = stat_of(app, &j.img)?;
        out.changes.push(Change {
            step: "initramfs".into(),
            file: j.img.clone(),
            action: "rebuilt".into(),
            before: format!("{} bytes", j.size_before),
            after: format!("{} bytes, with {}", after.0, drivers),
            command: Some(j.argv.join(" ")),
            seconds: Some(r.seconds),
        });
        rebuilt.push((j.img, after.0, after.1));
    }
    Ok(rebuilt)
}

/// The GRUB configuration to regenerate (or edit): its path, its text before, and
/// the guest's own command, when regeneration is needed and possible.
struct GrubJob {
    cfg: String,
    old: String,
    argv: Option<Vec<String>>,
}

/// A GRUB configuration's device names for the target: kernel names for the bus,
/// VMware's by-id names for the target's.
fn grub_names(text: &str, bus: DiskBus, by_id: &[(String, String)]) -> String {
    edit::rename_by_id(&edit::rename_in_grub_cfg(text, bus), by_id)
}

fn plan_grub(
    app: &Appliance,
    insp: &Inspection,
    bus: DiskBus,
    by_id: &[(String, String)],
    inputs_changed: bool,
) -> Result<Option<GrubJob>> {
    let Some(cfg) = insp.bootloader.config.clone() else {
        return Ok(None);
    };
    let old = app.read(&cfg)?;
    let stale = grub_names(&old, bus, by_id) != old;
    let mut argv = None;
    if (inputs_changed || stale) && insp.bootloader.kind != "grub-legacy" {
        if let Some(tool) = &insp.bootloader.mkconfig {
            argv = Some(if tool == "update-grub" {
                vec!["update-grub".to_string()]
            } else {
                vec![tool.clone(), "-o".into(), cfg.clone()]
            });
        }
    }
    Ok(Some(GrubJob { cfg, old, argv }))
}

fn finish_grub(
    app: &Appliance,
    job: GrubJob,
    result: Option<crate::appliance::JobOutcome>,
    (bus, by_id): (DiskBus, &[(String, String)]),
    out: &mut Outcome,
) -> Result<()> {
    let GrubJob { cfg, old, argv } = job;
    let mut command = None;
    let mut seconds = None;
    if let (Some(argv), Some(r)) = (argv, result) {
        if r.ok {
            command = Some(argv.join(" "));
            seconds = Some(r.seconds);
            // grub-probe saw the appliance kernel's names, which its async SCSI
            // scan may have swapped (seen here: root=/dev/sdb1 for drive 0).
            let map = appliance_disk_map(app)?;
            let generated = app.read(&cfg)?;
            let fixed = edit::translate_appliance_names(&generated, &map);
            if fixed != generated {
                app.write(&cfg, &fixed)?;
            }
        } else {
            out.warnings.push(format!(
                "regenerating the GRUB configuration failed ({}: {}); the existing {cfg} is edited in place instead",
                argv.join(" "),
                tail_of(&r.output)
            ));
        }
    }
    // grub-mkconfig ran in the appliance, where the guest's first disk is /dev/sda:
    // device names it wrote are renamed like every other file.
    let generated = app.read(&cfg)?;
    let new = grub_names(&generated, bus, by_id);
    if new != generated {
        app.write(&cfg, &new)?;
    }
    if new != old {
        let (before, after) = edit::excerpt(&old, &new);
        out.changes.push(Change {
            step: "grub-config".into(),
            file: cfg.clone(),
            action: if command.is_some() {
                "rebuilt"
            } else {
                "edited"
            }
            .into(),
            before,
            after,
            seconds,
            command,
        });
    } else {
        out.same("grub-config", format!("{cfg} already as wanted"));
    }
    // Boot Loader Specification entries (RHEL 8+) hold their own command lines.
    for entry in app.glob("/boot/loader/entries/*.conf")? {
        edit_file(app, out, "grub-config", &entry, |t| {
            grub_names(t, bus, by_id)
        })?;
    }
    Ok(())
}

/// Kernel disk name → drive index inside the appliance. libguestfs attaches drive N as
/// SCSI target N of its virtio-scsi host and translates names in its own API, but
/// programs run in the guest see the kernel's names.
fn appliance_disk_map(app: &Appliance) -> Result<Vec<(String, usize)>> {
    let out = app.command(
        "listing the appliance's disks",
        &[
            "sh",
            "-c",
            "for b in /sys/block/sd*; do echo \"${b##*/} $(readlink -f \"$b/device\")\"; done",
        ],
    )?;
    let mut map = Vec::new();
    for line in out.lines() {
        let Some((name, path)) = line.split_once(' ') else {
            continue;
        };
        // .../target2:0:1/2:0:1:0 → H:C:T:L, T is the drive index.
        let hctl = path.rsplit('/').next().unwrap_or("");
        if let Some(t) = hctl.split(':').nth(2).and_then(|t| t.parse::<usize>().ok()) {
            if t < app.disks.len() && edit::is_safe_name(name) {
                map.push((name.to_string(), t));
            }
        }
    }
    Ok(map)
}

fn install_agent(
    app: &Appliance,
    keep: bool,
    services: &[String],
    marker: Option<&Marker>,
    out: &mut Outcome,
) -> Result<bool> {
    if marker.is_some_and(|m| m.agent_installed) && !app.exists(agent::SCRIPT_PATH)? {
        out.same("agent", "the agent already reported and removed itself");
        return Ok(true);
    }
    put(
        app,
        out,
        "agent",
        agent::SCRIPT_PATH,
        &agent::script(keep, services),
    )?;
    app.g
        .chmod(0o755, agent::SCRIPT_PATH)
        .map_err(gerr("chmod agent"))?;
    put(app, out, "agent", agent::UNIT_PATH, &agent::unit())?;
    let wants = agent::WANTS_LINK;
    let linked = app.g.is_symlink(wants).unwrap_or(false)
        && app
            .g
            .readlink(wants)
            .map(|t| t == agent::UNIT_PATH)
            .unwrap_or(false);
    if !linked {
        app.g
            .mkdir_p("/etc/systemd/system/multi-user.target.wants")
            .map_err(gerr("mkdir wants"))?;
        app.g
            .ln_sf(agent::UNIT_PATH, wants)
            .map_err(gerr("enabling the agent"))?;
        out.changes.push(Change {
            step: "agent".into(),
            file: wants.into(),
            action: "created".into(),
            before: String::new(),
            after: format!("-> {}", agent::UNIT_PATH),
            command: None,
            seconds: None,
        });
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inspect::ConfiguredNic;

    fn nic(name: &str, mac: Option<&str>) -> ConfiguredNic {
        ConfiguredNic {
            name: name.into(),
            mac: mac.map(str::to_string),
            file: "/etc/network/interfaces".into(),
            ipv4: None,
        }
    }

    #[test]
    fn pins_by_configured_mac_first_then_in_order() {
        let macs = vec![
            "00:50:56:00:00:01".to_string(),
            "00:50:56:00:00:02".to_string(),
        ];
        let (pins, warnings) = plan_pins(
            &macs,
            &[
                nic("ens192", None),
                nic("ens224", Some("00:50:56:00:00:01")),
                nic("br0", None),
            ],
        );
        assert_eq!(pins.len(), 2);
        assert_eq!(
            (pins[0].name.as_str(), pins[0].mac.as_str()),
            ("ens224", "00:50:56:00:00:01")
        );
        assert_eq!(
            (pins[1].name.as_str(), pins[1].mac.as_str()),
            ("ens192", "00:50:56:00:00:02")
        );
        assert!(warnings.is_empty(), "{warnings:?}");
    }

    #[test]
    fn warns_about_nics_without_a_name() {
        let macs = vec!["00:50:56:00:00:01".to_string()];
        let (pins, warnings) = plan_pins(&macs, &[]);
        assert!(pins.is_empty());
        assert_eq!(warnings.len(), 1);
    }
}
