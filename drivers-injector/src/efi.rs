//! The UEFI removable-media boot path for a migrated Linux guest.
//!
//! VMware keeps a UEFI guest's boot entry (`Boot0001 = \EFI\debian\shimx64.efi`) in the
//! VM's own NVRAM file, which does not come along: on KVM, OVMF starts from a fresh
//! variable store that names no boot loader, and finds one only at the removable-media
//! path `\EFI\BOOT\BOOTX64.EFI`. A guest installed without that fallback (GRUB installed
//! without `--removable`, as RHEL and Debian do by default) then stops at "No bootable
//! option or device was found". So, as virt-v2v does, v2k copies the guest's own loader
//! to the fallback path when it is missing: shim and the GRUB it chains to (shim loads
//! `grubx64.efi` from its own directory), or GRUB alone. Nothing is copied when the
//! fallback exists, and nothing outside `\EFI\BOOT\` changes. The choice is a pure
//! function of the ESP's file list ([`fallback`]), tested on lists.

use crate::appliance::Appliance;
use crate::log::Change;
use crate::Result;

/// Where the ESP is mounted in the guests v2k converts (every distribution's default).
pub(crate) const ESP: &str = "/boot/efi";

/// One file to copy into `\EFI\BOOT\`: (from, to), both guest paths.
type Copy = (String, String);

/// The copies that give an ESP a removable-media loader, from its file list (guest paths
/// under [`ESP`], as `find` gives them). Empty when the fallback exists or when there
/// is no loader to copy. FAT is case-insensitive, so names compare without case.
pub(crate) fn fallback(files: &[String]) -> Vec<Copy> {
    let lower = |s: &str| s.to_ascii_lowercase();
    let boot_dir = format!("{ESP}/EFI/BOOT");
    if files
        .iter()
        .any(|f| lower(f) == lower(&format!("{boot_dir}/BOOTX64.EFI")))
    {
        return Vec::new();
    }
    // Loaders in a vendor directory (`\EFI\debian\`, `\EFI\redhat\`…), in name order
    // so that the choice is the same on every run.
    let mut vendor: Vec<&String> = files
        .iter()
        .filter(|f| {
            let l = lower(f);
            let Some(rest) = l.strip_prefix(&lower(&format!("{ESP}/EFI/"))) else {
                return false;
            };
            let mut parts = rest.split('/');
            matches!((parts.next(), parts.next(), parts.next()), (Some(d), Some(_), None) if d != "boot")
        })
        .collect();
    vendor.sort();
    let find = |name: &str| {
        vendor
            .iter()
            .find(|f| lower(f).ends_with(&format!("/{name}")))
            .map(|f| f.to_string())
    };
    let dir_of = |f: &str| f.rsplit_once('/').map(|(d, _)| d.to_string());
    if let Some(shim) = find("shimx64.efi") {
        let dir = dir_of(&shim).unwrap_or_default();
        let mut copies = vec![(shim.clone(), format!("{boot_dir}/BOOTX64.EFI"))];
        // shim chains to grubx64.efi (and MokManager, mmx64.efi) beside itself.
        for name in ["grubx64.efi", "mmx64.efi"] {
            if let Some(f) = vendor
                .iter()
                .find(|f| lower(f) == lower(&format!("{dir}/{name}")))
            {
                copies.push((f.to_string(), format!("{boot_dir}/{name}")));
            }
        }
        return copies;
    }
    match find("grubx64.efi") {
        Some(grub) => vec![(grub, format!("{boot_dir}/BOOTX64.EFI"))],
        None => Vec::new(),
    }
}

/// Installs the fallback loader when the guest's ESP lacks one; records each copy.
/// Does nothing on a guest without an ESP at [`ESP`].
pub(crate) fn install_fallback(app: &Appliance, changes: &mut Vec<Change>) -> Result<()> {
    if !app.is_dir(&format!("{ESP}/EFI"))? {
        return Ok(());
    }
    let files = app.find_files(ESP)?;
    let copies = fallback(&files);
    if copies.is_empty() {
        return Ok(());
    }
    app.mkdir_p(&format!("{ESP}/EFI/BOOT"))?;
    for (from, to) in copies {
        app.copy_file(&from, &to)?;
        changes.push(Change {
            step: "efi-fallback".into(),
            file: to,
            action: "created".into(),
            before: String::new(),
            after: format!("a copy of {from}"),
            command: None,
            seconds: None,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn esp(files: &[&str]) -> Vec<String> {
        files.iter().map(|f| format!("{ESP}/{f}")).collect()
    }

    #[test]
    fn grub_alone_becomes_the_removable_loader() {
        let c = fallback(&esp(&["EFI", "EFI/debian", "EFI/debian/grubx64.efi"]));
        assert_eq!(
            c,
            vec![(
                "/boot/efi/EFI/debian/grubx64.efi".to_string(),
                "/boot/efi/EFI/BOOT/BOOTX64.EFI".to_string()
            )]
        );
    }

    #[test]
    fn shim_comes_with_the_grub_and_mokmanager_it_chains_to() {
        let c = fallback(&esp(&[
            "EFI/redhat/BOOTX64.CSV",
            "EFI/redhat/grub.cfg",
            "EFI/redhat/grubx64.efi",
            "EFI/redhat/mmx64.efi",
            "EFI/redhat/shimx64.efi",
        ]));
        let to: Vec<&str> = c.iter().map(|(_, t)| t.as_str()).collect();
        assert_eq!(
            to,
            [
                "/boot/efi/EFI/BOOT/BOOTX64.EFI",
                "/boot/efi/EFI/BOOT/grubx64.efi",
                "/boot/efi/EFI/BOOT/mmx64.efi"
            ]
        );
        assert_eq!(c[0].0, "/boot/efi/EFI/redhat/shimx64.efi");
    }

    #[test]
    fn an_existing_fallback_in_any_case_is_left_alone() {
        for name in ["EFI/BOOT/BOOTX64.EFI", "EFI/boot/bootx64.efi"] {
            assert!(fallback(&esp(&[name, "EFI/debian/grubx64.efi"])).is_empty());
        }
    }

    #[test]
    fn no_loader_means_nothing_to_copy() {
        assert!(fallback(&esp(&["EFI/debian/grub.cfg"])).is_empty());
        assert!(fallback(&[]).is_empty());
        // A loader deeper than a vendor directory is not a boot loader's place.
        assert!(fallback(&esp(&["EFI/debian/x/grubx64.efi"])).is_empty());
    }
}
