//! Pure text edits of guest configuration files, kept apart from the appliance so each
//! rule is unit-tested: block-device renaming for the target bus, the initramfs-tools
//! module list, and the readers of network configuration files. Everything here reads
//! untrusted guest text: names are checked with [`is_safe_name`] before they reach a
//! path, a command line or a generated file.

/// Longest guest-supplied name we carry into files and commands (interface names are
/// at most 15 bytes, kernel versions well under 64).
const MAX_NAME_LEN: usize = 64;

/// Longest excerpt line kept in the conversion log.
const MAX_EXCERPT_LINE: usize = 200;
/// Most lines per before/after excerpt.
const MAX_EXCERPT_LINES: usize = 20;

/// A name safe to use in a guest path, a command argument and generated config:
/// letters, digits and `._+:@-`, not starting with `-` or `.`.
pub fn is_safe_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME_LEN
        && !s.starts_with(['-', '.'])
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._+:@-".contains(c))
}

/// Guest text made safe for a log or a terminal: control characters but tab dropped,
/// length capped.
pub fn printable(s: &str) -> String {
    s.chars()
        .filter(|c| *c == '\t' || !c.is_control())
        .take(MAX_EXCERPT_LINE)
        .collect()
}

pub use v2k_kvm_target::DiskBus;

/// `/dev/disk/by-id/` names replaced by the target's (`renames`, from
/// [`v2k_kvm_target::by_id_renames`]): only a whole name after `by-id/`, so a name
/// followed by `-partN`, a quote, `|` or the end of the line is renamed and a longer
/// name that merely starts with it is not. For fstab, crypttab, GRUB and LVM filters.
pub fn rename_by_id(text: &str, renames: &[(String, String)]) -> String {
    const MARK: &str = "by-id/";
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(MARK) {
        let (head, tail) = rest.split_at(at + MARK.len());
        out.push_str(head);
        rest = tail;
        let hit = renames.iter().find(|(from, _)| {
            rest.strip_prefix(from.as_str())
                .is_some_and(|after| !after.starts_with(|c: char| c.is_ascii_alphanumeric()))
        });
        if let Some((from, to)) = hit {
            out.push_str(to);
            rest = &rest[from.len()..];
        }
    }
    out.push_str(rest);
    out
}

/// Replaces each WWID of `renames` (`3<uuid>`) standing as a word of its own — not
/// part of a longer run of letters and digits, so `scsi-3<uuid>` is one too — by the
/// target's identifier. Hex digits compare without case (multipath and udev files are
/// written by hand as often as by tools).
pub fn rename_wwid(text: &str, renames: &[(String, String)]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let bytes = text.as_bytes();
    'scan: while i < text.len() {
        let word_start = i == 0 || !bytes[i - 1].is_ascii_alphanumeric();
        if word_start {
            for (from, to) in renames {
                let end = i + from.len();
                if end <= text.len()
                    && text.is_char_boundary(end)
                    && text[i..end].eq_ignore_ascii_case(from)
                    && bytes.get(end).is_none_or(|b| !b.is_ascii_alphanumeric())
                {
                    out.push_str(to);
                    i = end;
                    continue 'scan;
                }
            }
        }
        let c = text[i..].chars().next().expect("i is on a char boundary");
        out.push(c);
        i += c.len_utf8();
    }
    out
}

/// The new name of a whole-disk or partition device name (without `/dev/`), or `None`
/// when it needs no change or is not a disk we rename.
pub fn rename_device(name: &str, bus: DiskBus) -> Option<String> {
    let (prefix, rest) = ["xvd", "sd", "hd", "vd"]
        .iter()
        .find_map(|p| name.strip_prefix(p).map(|r| (*p, r)))?;
    let letters: String = rest
        .chars()
        .take_while(|c| c.is_ascii_lowercase())
        .collect();
    let part = &rest[letters.len()..];
    if letters.is_empty() || letters.len() > 2 || !part.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let new_prefix = match bus {
        DiskBus::VirtioBlk => "vd",
        DiskBus::VirtioScsi => "sd",
    };
    if prefix == new_prefix {
        return None;
    }
    Some(format!("{new_prefix}{letters}{part}"))
}

/// Renames every `/dev/<disk>` in `line`.
pub fn rename_in_line(line: &str, bus: DiskBus) -> String {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(i) = rest.find("/dev/") {
        out.push_str(&rest[..i + 5]);
        rest = &rest[i + 5..];
        let end = rest
            .find(|c: char| !c.is_ascii_alphanumeric())
            .unwrap_or(rest.len());
        let name = &rest[..end];
        match rename_device(name, bus) {
            Some(new) => out.push_str(&new),
            None => out.push_str(name),
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// Renames devices on the non-comment lines of an fstab, crypttab or device.map.
pub fn rename_in_table(text: &str, bus: DiskBus) -> String {
    map_lines(text, |l| {
        if l.trim_start().starts_with('#') {
            l.to_string()
        } else {
            rename_in_line(l, bus)
        }
    })
}

/// Renames devices (`root=`, `resume=`) in the `GRUB_CMDLINE_LINUX*` lines of
/// /etc/default/grub, and only there.
pub fn rename_in_default_grub(text: &str, bus: DiskBus) -> String {
    map_lines(text, |l| {
        if l.trim_start().starts_with("GRUB_CMDLINE_LINUX") {
            rename_in_line(l, bus)
        } else {
            l.to_string()
        }
    })
}

/// Renames devices in the kernel command lines (`linux`/`linux16`/`linuxefi` lines,
/// `kernelopts=`) of a generated grub.cfg or a BLS entry.
pub fn rename_in_grub_cfg(text: &str, bus: DiskBus) -> String {
    map_lines(text, |l| {
        let t = l.trim_start();
        if t.starts_with("linux")
            || t.starts_with("kernel")
            || t.starts_with("options")
            || t.starts_with("set kernelopts=")
        {
            rename_in_line(l, bus)
        } else {
            l.to_string()
        }
    })
}

/// Rewrites the appliance kernel's disk names in a grub.cfg written by grub-mkconfig
/// inside the appliance to the names of the drives as given (`/dev/sdb1` → `/dev/sda1`
/// when the appliance's SCSI scan named the first drive sdb), and GRUB's BIOS disk
/// numbers in hints (`hd1,` → `hd0,`). `map` pairs kernel disk names with drive indexes.
/// Both passes read the original line, so swapped names never chain.
pub fn translate_appliance_names(text: &str, map: &[(String, usize)]) -> String {
    if map.iter().all(|(k, i)| *k == format!("sd{}", letters(*i))) {
        return text.to_string();
    }
    // GRUB numbers BIOS disks in the order the kernel names sort.
    let mut sorted: Vec<&(String, usize)> = map.iter().collect();
    sorted.sort_by_key(|(k, _)| (k.len(), k.clone()));
    let hd: Vec<(usize, usize)> = sorted
        .iter()
        .enumerate()
        .map(|(pos, (_, i))| (pos, *i))
        .collect();
    map_lines(text, |line| {
        let mut out = String::with_capacity(line.len());
        let b = line.as_bytes();
        let mut i = 0;
        while i < line.len() {
            let rest = &line[i..];
            if let Some(r) = rest.strip_prefix("/dev/") {
                let end = r
                    .find(|c: char| !c.is_ascii_alphanumeric())
                    .unwrap_or(r.len());
                let name = &r[..end];
                let disk: String = name
                    .chars()
                    .take_while(|c| c.is_ascii_alphabetic())
                    .collect();
                let part = &name[disk.len()..];
                match map.iter().find(|(k, _)| *k == disk) {
                    Some((_, idx)) if part.chars().all(|c| c.is_ascii_digit()) => {
                        out.push_str(&format!("/dev/sd{}{part}", letters(*idx)))
                    }
                    _ => out.push_str(&rest[..5 + end]),
                }
                i += 5 + end;
                continue;
            }
            let word_start = i == 0 || !b[i - 1].is_ascii_alphanumeric();
            let prefix = ["hd", "ahci"].into_iter().find(|p| rest.starts_with(p));
            if let (true, Some(p)) = (word_start, prefix) {
                let digits: String = rest[p.len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_digit())
                    .collect();
                if let Some((_, idx)) = digits
                    .parse::<usize>()
                    .ok()
                    .and_then(|n| hd.iter().find(|(pos, _)| *pos == n))
                {
                    out.push_str(&format!("{p}{idx}"));
                    i += p.len() + digits.len();
                    continue;
                }
            }
            let c = rest.chars().next().expect("non-empty");
            out.push(c);
            i += c.len_utf8();
        }
        out
    })
}

/// Disk letters of drive `i`: a..z, then aa..zz, as the kernel names them.
pub fn letters(i: usize) -> String {
    if i < 26 {
        ((b'a' + i as u8) as char).to_string()
    } else {
        let hi = (i / 26 - 1).min(25);
        format!(
            "{}{}",
            (b'a' + hi as u8) as char,
            (b'a' + (i % 26) as u8) as char
        )
    }
}

fn map_lines(text: &str, f: impl Fn(&str) -> String) -> String {
    let mut out: String = text.lines().map(f).collect::<Vec<_>>().join("\n");
    if text.ends_with('\n') {
        out.push('\n');
    }
    out
}

/// Appends the modules missing from an initramfs-tools `modules` file (one per line,
/// options after the name allowed), under a comment saying who added them.
pub fn ensure_modules(text: &str, modules: &[&str]) -> String {
    let present: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let missing: Vec<&&str> = modules.iter().filter(|m| !present.contains(m)).collect();
    if missing.is_empty() {
        return text.to_string();
    }
    let mut out = text.to_string();
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str("# Added by v2k inject: virtio drivers to boot on KVM.\n");
    for m in missing {
        out.push_str(m);
        out.push('\n');
    }
    out
}

/// Hosts whose package repositories serve only VMware guests (VMware Tools, VMware's
/// builds of open-vm-tools): after the move they fail or pull VMware drivers back in.
pub const VMWARE_REPO_HOSTS: [&str; 2] = ["packages.vmware.com", "packages-prod.broadcom.com"];

/// Modules that only VMware's own Tools installer builds (out of tree, under
/// `/lib/modules/<v>/misc`, `updates` or `extra`); the in-kernel vmw_* drivers are
/// harmless on KVM. Its `vsock.ko` is left out: blacklisting that name would also
/// stop the in-kernel vsock core that virtio-vsock needs.
pub const VMWARE_ONLY_MODULES: [&str; 6] =
    ["vmxnet", "vmhgfs", "vmmemctl", "vmblock", "vmsync", "vmci"];

/// Prefix of a line v2k disabled, kept so that the change can be read and undone.
pub const DISABLED_MARK: &str = "# Disabled by v2k inject (VMware-only repository): ";

fn names_vmware_host(line: &str) -> bool {
    let l = line.to_ascii_lowercase();
    VMWARE_REPO_HOSTS.iter().any(|h| l.contains(h))
}

/// apt one-line sources (`sources.list`, `*.list`): active `deb`/`deb-src` lines that
/// name a VMware host are commented out.
pub fn disable_vmware_apt_lines(text: &str) -> String {
    map_lines(text, |line| {
        let t = line.trim_start();
        let active = t.starts_with("deb ") || t.starts_with("deb-src ") || t.starts_with("deb\t");
        if active && names_vmware_host(t) {
            format!("{DISABLED_MARK}{line}")
        } else {
            line.to_string()
        }
    })
}

/// apt deb822 sources (`*.sources`): a stanza whose `URIs:` names a VMware host gets
/// `Enabled: no` (an existing `Enabled:` field is set to `no`).
pub fn disable_vmware_deb822(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let mut out: Vec<String> = Vec::with_capacity(lines.len() + 2);
    let mut i = 0;
    while i < lines.len() {
        // One stanza: up to the next blank line.
        let start = i;
        while i < lines.len() && !lines[i].trim().is_empty() {
            i += 1;
        }
        let stanza = &lines[start..i];
        let field = |l: &str, name: &str| {
            l.split_once(':')
                .is_some_and(|(k, _)| k.trim().eq_ignore_ascii_case(name))
        };
        let vmware = stanza
            .iter()
            .any(|l| field(l, "URIs") && names_vmware_host(l));
        if vmware {
            let mut has_enabled = false;
            for l in stanza {
                if field(l, "Enabled") {
                    has_enabled = true;
                    out.push("Enabled: no".into());
                } else {
                    out.push(l.to_string());
                }
            }
            if !has_enabled {
                out.push("Enabled: no".into());
            }
        } else {
            out.extend(stanza.iter().map(|l| l.to_string()));
        }
        // The blank separator lines.
        while i < lines.len() && lines[i].trim().is_empty() {
            out.push(lines[i].to_string());
            i += 1;
        }
    }
    let mut s = out.join("\n");
    if text.ends_with('\n') {
        s.push('\n');
    }
    s
}

/// yum/dnf/zypper `.repo` files (INI): a section whose `baseurl`, `mirrorlist` or
/// `metalink` names a VMware host gets `enabled=0`.
pub fn disable_vmware_ini_repos(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    // Sections as [start, end) line ranges; the header is lines[start].
    let mut sections = Vec::new();
    for (n, l) in lines.iter().enumerate() {
        if l.trim_start().starts_with('[') {
            if let Some(last) = sections.last_mut() {
                let (_, end): &mut (usize, usize) = last;
                *end = n;
            }
            sections.push((n, lines.len()));
        }
    }
    let key_of = |l: &str| {
        l.split_once('=')
            .map(|(k, _)| k.trim().to_ascii_lowercase())
            .unwrap_or_default()
    };
    let mut out: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    // Insertions are done back to front so earlier indexes stay valid.
    for &(start, end) in sections.iter().rev() {
        let body = &lines[start + 1..end];
        let vmware = body.iter().any(|l| {
            matches!(key_of(l).as_str(), "baseurl" | "mirrorlist" | "metalink")
                && names_vmware_host(l)
        });
        if !vmware {
            continue;
        }
        let mut found = false;
        for (k, l) in body.iter().enumerate() {
            if key_of(l) == "enabled" {
                out[start + 1 + k] = "enabled=0".into();
                found = true;
            }
        }
        if !found {
            out.insert(start + 1, "enabled=0".into());
        }
    }
    let mut s = out.join("\n");
    if text.ends_with('\n') {
        s.push('\n');
    }
    s
}

/// The modprobe configuration that keeps VMware-only modules from loading.
pub fn vmware_module_blacklist(modules: &[String]) -> String {
    let mut s = String::from(
        "# Written by v2k inject: VMware-only drivers (built by VMware Tools) are not\n\
         # loaded on KVM. Delete this file to undo.\n",
    );
    for m in modules {
        s.push_str(&format!("blacklist {m}\n"));
    }
    s
}

/// A `KEY=value` from a shell-style file (initramfs.conf, selinux/config, ifcfg), with
/// quotes removed; the last assignment wins, as in the shell.
pub fn shell_var(text: &str, key: &str) -> Option<String> {
    text.lines()
        .rev()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .map(|v| v.trim().trim_matches(['"', '\'']).to_string())
        .next()
}

/// A `key=value` from an ini-style file (NetworkManager keyfile), any section.
pub fn ini_value(text: &str, key: &str) -> Option<String> {
    text.lines()
        .map(str::trim)
        .filter_map(|l| l.strip_prefix(key)?.trim_start().strip_prefix('='))
        .map(|v| v.trim().to_string())
        .find(|v| !v.is_empty())
}

/// Interface names in ifupdown's `interfaces`: `iface NAME`, `auto NAME...`,
/// `allow-hotplug NAME...` (in order of first appearance, without `lo`).
pub fn ifupdown_names(text: &str) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for l in text.lines().map(str::trim) {
        let mut w = l.split_whitespace();
        let found: Vec<&str> = match w.next() {
            Some("iface") => w.next().into_iter().collect(),
            Some(k) if k == "auto" || k.starts_with("allow-") => w.collect(),
            _ => Vec::new(),
        };
        for n in found {
            // `iface eth0:1` is an alias of eth0; `eth0.100` a VLAN on top of it.
            let base = n.split([':', '.']).next().unwrap_or(n);
            if base != "lo" && is_safe_name(base) && !names.iter().any(|x| x == base) {
                names.push(base.to_string());
            }
        }
    }
    names
}

/// `[Match] Name=` (exact names only, not globs) and `MACAddress=` of a .network file.
pub fn networkd_match(text: &str) -> (Vec<String>, Option<String>) {
    let mut in_match = false;
    let mut names = Vec::new();
    let mut mac = None;
    for l in text.lines().map(str::trim) {
        if l.starts_with('[') {
            in_match = l == "[Match]";
            continue;
        }
        if !in_match {
            continue;
        }
        if let Some(v) = l.strip_prefix("Name=") {
            names.extend(
                v.split_whitespace()
                    .filter(|n| !n.contains(['*', '?', '[', '!']) && is_safe_name(n))
                    .map(str::to_string),
            );
        } else if let Some(v) = l.strip_prefix("MACAddress=") {
            mac = v.split_whitespace().next().map(str::to_lowercase);
        }
    }
    (names, mac)
}

/// Interface names under `ethernets:` in a netplan file (a small indentation reader:
/// enough for the generated files installers write).
pub fn netplan_ethernets(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut section_indent: Option<usize> = None;
    let mut child_indent: Option<usize> = None;
    for l in text.lines() {
        let t = l.trim_start();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let indent = l.len() - t.len();
        match section_indent {
            None => {
                if t.trim_end() == "ethernets:" {
                    section_indent = Some(indent);
                }
            }
            Some(si) if indent <= si => {
                section_indent = (t.trim_end() == "ethernets:").then_some(indent);
                child_indent = None;
            }
            Some(_) => {
                let ci = *child_indent.get_or_insert(indent);
                if indent == ci {
                    if let Some(name) = t.trim_end().strip_suffix(':') {
                        let name = name.trim_matches(['"', '\'']);
                        if is_safe_name(name) {
                            names.push(name.to_string());
                        }
                    }
                }
            }
        }
    }
    names
}

/// `(mac, name)` pairs of a udev persistent-net rules file.
pub fn udev_persistent(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for l in text.lines().map(str::trim).filter(|l| !l.starts_with('#')) {
        let get = |key: &str| {
            let i = l.find(key)? + key.len();
            let v = &l[i..];
            let end = v.find('"')?;
            Some(v[..end].to_string())
        };
        if let (Some(mac), Some(name)) = (get("ATTR{address}==\""), get("NAME=\"")) {
            if is_safe_name(&name) && is_mac(&mac) {
                out.push((mac.to_lowercase(), name));
            }
        }
    }
    out
}

/// A colon-separated 6-byte MAC.
pub use v2k_inventory::model::is_mac;

/// A short before/after excerpt of what changed between two versions of a file: the
/// lines only in `before`, and the lines only in `after`.
pub fn excerpt(before: &str, after: &str) -> (String, String) {
    let b: Vec<&str> = before.lines().collect();
    let a: Vec<&str> = after.lines().collect();
    let only = |x: &[&str], y: &[&str]| {
        x.iter()
            .filter(|l| !y.contains(l))
            .take(MAX_EXCERPT_LINES)
            .map(|l| printable(l))
            .collect::<Vec<_>>()
            .join("\n")
    };
    (only(&b, &a), only(&a, &b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renames_wwids_in_multipath_and_udev_files_as_whole_words() {
        let u = "6000c2930f8356400b2c082cac6f3574";
        let renames = vec![(format!("3{u}"), "36000c2930f835640".to_string())];
        let udev = format!(
            "KERNEL==\"sd*\", ENV{{ID_SERIAL}}==\"3{u}\", SYMLINK+=\"oracleasm/disks/DATA1\"\n\
             KERNEL==\"sd?1\", PROGRAM==\"/lib/udev/scsi_id -g -u -d /dev/$parent\", RESULT==\"3{}\", OWNER=\"grid\"\n\
             ENV{{ID_SERIAL}}==\"3{u}ff\", SYMLINK+=\"other\"\n\
             ENV{{ID_SERIAL}}==\"93{u}\", SYMLINK+=\"another\"\n",
            u.to_ascii_uppercase()
        );
        let got = rename_wwid(&udev, &renames);
        assert_eq!(got.matches("36000c2930f835640\"").count(), 2, "{got}");
        assert!(
            got.contains(&format!("3{u}ff")),
            "a longer id is another disk: {got}"
        );
        assert!(got.contains(&format!("93{u}")), "{got}");
        let wwids = format!("# Multipath wwids, Version : 1.0\n/3{u}/\n");
        assert_eq!(
            rename_wwid(&wwids, &renames),
            "# Multipath wwids, Version : 1.0\n/36000c2930f835640/\n"
        );
        let conf =
            format!("multipaths {{\n  multipath {{\n    wwid 3{u}\n    alias ora_data\n  }}\n}}\n");
        assert!(rename_wwid(&conf, &renames).contains("wwid 36000c2930f835640\n"));
        assert_eq!(
            rename_wwid("née 3 ", &renames),
            "née 3 ",
            "non-ASCII text passes"
        );
    }

    #[test]
    fn renames_vmware_by_id_names_to_the_targets_whole_names_only() {
        let u = "6000c2930f8356400b2c082cac6f3574";
        let renames = vec![
            (
                format!("scsi-3{u}"),
                "virtio-6000c2930f8356400b2c".to_string(),
            ),
            (
                format!("wwn-0x{u}"),
                "virtio-6000c2930f8356400b2c".to_string(),
            ),
        ];
        let fstab = format!(
            "/dev/disk/by-id/scsi-3{u}-part1 / ext4 defaults 0 1\n\
             /dev/disk/by-id/wwn-0x{u} /data xfs defaults 0 2\n\
             /dev/disk/by-id/scsi-3{u}ff /other ext4 defaults 0 2\n\
             UUID=0f83 /boot ext4 defaults 0 2\n"
        );
        let out = rename_by_id(&fstab, &renames);
        assert_eq!(
            out,
            format!(
                "/dev/disk/by-id/virtio-6000c2930f8356400b2c-part1 / ext4 defaults 0 1\n\
                 /dev/disk/by-id/virtio-6000c2930f8356400b2c /data xfs defaults 0 2\n\
                 /dev/disk/by-id/scsi-3{u}ff /other ext4 defaults 0 2\n\
                 UUID=0f83 /boot ext4 defaults 0 2\n"
            )
        );
        // crypttab, GRUB and an LVM filter (a regular expression between `|`).
        let crypttab = format!("data /dev/disk/by-id/wwn-0x{u}-part2 none luks\n");
        assert_eq!(
            rename_by_id(&crypttab, &renames),
            "data /dev/disk/by-id/virtio-6000c2930f8356400b2c-part2 none luks\n"
        );
        let grub = format!("GRUB_CMDLINE_LINUX=\"resume=/dev/disk/by-id/scsi-3{u}-part3\"\n");
        assert_eq!(
            rename_by_id(&grub, &renames),
            "GRUB_CMDLINE_LINUX=\"resume=/dev/disk/by-id/virtio-6000c2930f8356400b2c-part3\"\n"
        );
        let lvm = format!("  filter = [ \"a|/dev/disk/by-id/scsi-3{u}|\", \"r|.*|\" ]\n");
        assert_eq!(
            rename_by_id(&lvm, &renames),
            "  filter = [ \"a|/dev/disk/by-id/virtio-6000c2930f8356400b2c|\", \"r|.*|\" ]\n"
        );
        // Idempotent, and nothing to do without renames.
        assert_eq!(rename_by_id(&out, &renames), out);
        assert_eq!(rename_by_id(&fstab, &[]), fstab);
    }

    #[test]
    fn renames_scsi_ide_and_xen_disks_to_virtio_blk() {
        assert_eq!(
            rename_device("sda", DiskBus::VirtioBlk).as_deref(),
            Some("vda")
        );
        assert_eq!(
            rename_device("sdb1", DiskBus::VirtioBlk).as_deref(),
            Some("vdb1")
        );
        assert_eq!(
            rename_device("hdc2", DiskBus::VirtioBlk).as_deref(),
            Some("vdc2")
        );
        assert_eq!(
            rename_device("xvdaa3", DiskBus::VirtioBlk).as_deref(),
            Some("vdaa3")
        );
        assert_eq!(rename_device("vda1", DiskBus::VirtioBlk), None);
        assert_eq!(rename_device("sda1", DiskBus::VirtioScsi), None);
        assert_eq!(
            rename_device("vdb", DiskBus::VirtioScsi).as_deref(),
            Some("sdb")
        );
        // Not disks: left alone.
        assert_eq!(rename_device("mapper", DiskBus::VirtioBlk), None);
        assert_eq!(rename_device("sdcard0x", DiskBus::VirtioBlk), None);
        assert_eq!(rename_device("hda1p", DiskBus::VirtioBlk), None);
    }

    #[test]
    fn rewrites_fstab_lines_but_not_comments_or_mapper_paths() {
        let fstab = "# /dev/sda1 was the installer's\n/dev/sda1\t/\text4\terrors=remount-ro\t0\t1\n\
                     /dev/sdb1\t/data\text4\tdefaults\t0\t2\n/dev/mapper/vg-root / ext4 defaults 0 1\n";
        let out = rename_in_table(fstab, DiskBus::VirtioBlk);
        assert_eq!(
            out,
            "# /dev/sda1 was the installer's\n/dev/vda1\t/\text4\terrors=remount-ro\t0\t1\n\
             /dev/vdb1\t/data\text4\tdefaults\t0\t2\n/dev/mapper/vg-root / ext4 defaults 0 1\n"
        );
        // Idempotent.
        assert_eq!(rename_in_table(&out, DiskBus::VirtioBlk), out);
    }

    #[test]
    fn rewrites_only_the_grub_cmdline_in_default_grub() {
        let text = "GRUB_DEVICE=/dev/sda1\nGRUB_CMDLINE_LINUX=\"root=/dev/sda1 resume=/dev/sdb2 console=ttyS0\"\n\
                    GRUB_CMDLINE_LINUX_DEFAULT=\"quiet resume=/dev/sda5\"";
        let out = rename_in_default_grub(text, DiskBus::VirtioBlk);
        assert_eq!(
            out,
            "GRUB_DEVICE=/dev/sda1\nGRUB_CMDLINE_LINUX=\"root=/dev/vda1 resume=/dev/vdb2 console=ttyS0\"\n\
             GRUB_CMDLINE_LINUX_DEFAULT=\"quiet resume=/dev/vda5\""
        );
    }

    #[test]
    fn rewrites_kernel_lines_of_grub_cfg_only() {
        let cfg =
            "set root='hd0,msdos1'\n\tlinux\t/boot/vmlinuz-6.1 root=/dev/sda1 ro console=ttyS0\n\
                   \tinitrd\t/boot/initrd.img-6.1\n";
        let out = rename_in_grub_cfg(cfg, DiskBus::VirtioBlk);
        assert!(out.contains("root=/dev/vda1 ro"));
        assert!(out.contains("set root='hd0,msdos1'"));
    }

    #[test]
    fn translates_swapped_appliance_disk_names_in_grub_cfg() {
        // The appliance named drive 0 sdb and drive 1 sda (asynchronous SCSI scan).
        let map = vec![("sdb".to_string(), 0), ("sda".to_string(), 1)];
        let cfg = "\tset root='hd1,msdos1'\n\tsearch --hint-bios=hd1,msdos1 --hint-baremetal=ahci1,msdos1 x\n\
                   \tlinux /boot/vmlinuz root=/dev/sdb1 ro resume=/dev/sda2\n";
        let out = translate_appliance_names(cfg, &map);
        assert_eq!(
            out,
            "\tset root='hd0,msdos1'\n\tsearch --hint-bios=hd0,msdos1 --hint-baremetal=ahci0,msdos1 x\n\
             \tlinux /boot/vmlinuz root=/dev/sda1 ro resume=/dev/sdb2\n"
        );
        let identity = vec![("sda".to_string(), 0), ("sdb".to_string(), 1)];
        assert_eq!(translate_appliance_names(cfg, &identity), cfg);
    }

    #[test]
    fn adds_missing_modules_once() {
        let text = "# comment\nvmw_pvscsi\nsd_mod\nvirtio_pci\n";
        let out = ensure_modules(text, &["virtio_pci", "virtio_blk"]);
        assert!(out.starts_with(text));
        assert!(out.ends_with("virtio_blk\n"));
        assert_eq!(out.matches("virtio_pci").count(), 1);
        assert_eq!(ensure_modules(&out, &["virtio_pci", "virtio_blk"]), out);
    }

    #[test]
    fn reads_network_names_from_each_system() {
        let ifupdown = "source /etc/network/interfaces.d/*\nauto lo\niface lo inet loopback\n\
                        allow-hotplug ens192\niface ens192 inet dhcp\niface ens192:1 inet static\nauto ens224.100\n";
        assert_eq!(ifupdown_names(ifupdown), vec!["ens192", "ens224"]);
        let networkd = "[Match]\nName=ens192 en*\nMACAddress=00:50:56:AA:BB:CC\n[Network]\nDHCP=ipv4\nName=x\n";
        assert_eq!(
            networkd_match(networkd),
            (
                vec!["ens192".to_string()],
                Some("00:50:56:aa:bb:cc".to_string())
            )
        );
        let netplan = "network:\n  version: 2\n  ethernets:\n    ens192:\n      dhcp4: true\n    \"ens224\":\n      addresses: [10.0.0.2/24]\n  bonds:\n    bond0:\n      interfaces: [x]\n";
        assert_eq!(netplan_ethernets(netplan), vec!["ens192", "ens224"]);
        let udev = "SUBSYSTEM==\"net\", ACTION==\"add\", ATTR{address}==\"00:50:56:aa:bb:cc\", NAME=\"eth0\"\n";
        assert_eq!(
            udev_persistent(udev),
            vec![("00:50:56:aa:bb:cc".to_string(), "eth0".to_string())]
        );
        assert_eq!(
            shell_var("SELINUX=enforcing\n#SELINUX=x\n", "SELINUX").as_deref(),
            Some("enforcing")
        );
        assert_eq!(
            shell_var("DEVICE=\"eth1\"\n", "DEVICE").as_deref(),
            Some("eth1")
        );
    }

    #[test]
    fn refuses_unsafe_guest_names() {
        assert!(is_safe_name("6.1.0-50-amd64"));
        assert!(is_safe_name("ens192"));
        for bad in [
            "", "-rf", "../x", "a b", "a;b", "a\"b", "a\nb", ".hidden", "a/b",
        ] {
            assert!(!is_safe_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn disables_vmware_apt_lines_only() {
        let t = "deb http://deb.debian.org/debian bookworm main\n\
                 deb https://packages.vmware.com/tools/releases/latest/ubuntu jammy main\n\
                 # deb https://packages.vmware.com/old main\n";
        let d = disable_vmware_apt_lines(t);
        assert!(d.starts_with("deb http://deb.debian.org/debian bookworm main\n"));
        assert!(d.contains(&format!(
            "{DISABLED_MARK}deb https://packages.vmware.com/tools"
        )));
        assert!(d.contains("\n# deb https://packages.vmware.com/old main\n"));
        assert_eq!(disable_vmware_apt_lines(&d), d, "idempotent");
    }

    #[test]
    fn disables_vmware_deb822_stanzas_only() {
        let t = "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm\n\n\
                 Types: deb\nURIs: https://packages.vmware.com/tools\nSuites: jammy\nEnabled: yes\n\n\
                 Types: deb\nURIs: https://packages-prod.broadcom.com/tools\nSuites: jammy\n";
        let d = disable_vmware_deb822(t);
        let stanzas: Vec<&str> = d.split("\n\n").collect();
        assert_eq!(stanzas.len(), 3, "{d}");
        assert!(!stanzas[0].contains("Enabled"));
        assert!(stanzas[1].contains("Enabled: no") && !stanzas[1].contains("yes"));
        assert!(stanzas[2].trim_end().ends_with("Enabled: no"), "{d}");
        assert_eq!(disable_vmware_deb822(&d), d, "idempotent");
    }

    #[test]
    fn disables_vmware_yum_sections_only() {
        let t = "[base]\nbaseurl=http://mirror.centos.org/x\nenabled=1\n\n\
                 [vmware-tools]\nname=VMware Tools\nbaseurl=https://packages.vmware.com/tools/esx/6.0/rhel7/x86_64\nenabled=1\n\n\
                 [vmw2]\nbaseurl=https://packages.vmware.com/x\n";
        let d = disable_vmware_ini_repos(t);
        assert!(d.starts_with("[base]\nbaseurl=http://mirror.centos.org/x\nenabled=1\n"));
        assert!(d.contains("x86_64\nenabled=0\n"), "{d}");
        assert!(d.contains("[vmw2]\nenabled=0\nbaseurl="), "{d}");
        assert_eq!(disable_vmware_ini_repos(&d), d, "idempotent");
        assert_eq!(disable_vmware_ini_repos(""), "");
    }

    #[test]
    fn excerpt_shows_changed_lines_only() {
        let (b, a) = excerpt("x\n/dev/sda1 /\ny\n", "x\n/dev/vda1 /\ny\n");
        assert_eq!(b, "/dev/sda1 /");
        assert_eq!(a, "/dev/vda1 /");
    }
}
