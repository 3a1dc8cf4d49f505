//! UEFI firmware for EFI guests: Debian's OVMF images (package `ovmf`) and the VM's own
//! variable store. The store is the VM's NVRAM — its boot entries, Secure Boot state
//! and anything the guest writes there — so each VM gets a private copy of the
//! template (plain, or with Microsoft's keys enrolled for Secure Boot); QEMU and
//! libvirt are never handed the system's template file as a writable drive, which
//! every other VM on the host would share.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// OVMF code and variable templates on Debian (package `ovmf`).
pub(crate) const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
/// Secure Boot build (needs SMM) and its template with Microsoft's keys enrolled, so
/// that a distribution's shim boots.
pub(crate) const OVMF_CODE_SECBOOT: &str = "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd";
pub(crate) const OVMF_VARS_SECBOOT: &str = "/usr/share/OVMF/OVMF_VARS_4M.ms.fd";

/// How the target boots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Firmware {
    /// SeaBIOS.
    Bios,
    /// OVMF, with the VM's own variable store at `vars`.
    #[serde(rename_all = "kebab-case")]
    Efi { secure_boot: bool, vars: PathBuf },
}

impl Firmware {
    /// The read-only code image and the variable template of this firmware.
    pub fn images(&self) -> Option<(&'static str, &'static str)> {
        match self {
            Firmware::Bios => None,
            Firmware::Efi {
                secure_boot: true, ..
            } => Some((OVMF_CODE_SECBOOT, OVMF_VARS_SECBOOT)),
            Firmware::Efi {
                secure_boot: false, ..
            } => Some((OVMF_CODE, OVMF_VARS)),
        }
    }

    pub fn secure_boot(&self) -> bool {
        matches!(
            self,
            Firmware::Efi {
                secure_boot: true,
                ..
            }
        )
    }

    /// The VM's variable store, for an EFI guest.
    pub fn vars(&self) -> Option<&Path> {
        match self {
            Firmware::Bios => None,
            Firmware::Efi { vars, .. } => Some(vars),
        }
    }

    /// The same firmware with its variable store at `vars` (a validation boot runs on
    /// a throw-away copy, as it does on disk overlays).
    pub fn with_vars(&self, vars: PathBuf) -> Firmware {
        match self {
            Firmware::Bios => Firmware::Bios,
            Firmware::Efi { secure_boot, .. } => Firmware::Efi {
                secure_boot: *secure_boot,
                vars,
            },
        }
    }

    /// A short description for reports: `bios`, `efi`, `efi secure-boot`.
    pub fn describe(&self) -> &'static str {
        match self {
            Firmware::Bios => "bios",
            Firmware::Efi {
                secure_boot: false, ..
            } => "efi",
            Firmware::Efi {
                secure_boot: true, ..
            } => "efi secure-boot",
        }
    }
}

/// Creates the VM's variable store from its template when it does not exist yet (an
/// existing store holds the VM's boot entries and is kept). Nothing for a BIOS guest.
pub fn ensure_vars(f: &Firmware) -> std::io::Result<()> {
    let (Some((_, template)), Some(vars)) = (f.images(), f.vars()) else {
        return Ok(());
    };
    match std::fs::symlink_metadata(vars) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            format!("{}: exists and is not a regular file", vars.display()),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let bytes = std::fs::read(template)?;
            v2k_outfile::write_atomic(vars, &bytes, false).map_err(std::io::Error::other)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secure_boot_picks_the_enrolled_template() {
        let f = Firmware::Efi {
            secure_boot: true,
            vars: "/run/v/vm_VARS.fd".into(),
        };
        assert_eq!(f.images(), Some((OVMF_CODE_SECBOOT, OVMF_VARS_SECBOOT)));
        let plain = f.with_vars("/w/x.fd".into());
        assert_eq!(plain.vars(), Some(Path::new("/w/x.fd")));
        assert!(plain.secure_boot());
        assert_eq!(Firmware::Bios.images(), None);
        assert_eq!(Firmware::Bios.vars(), None);
    }
}
