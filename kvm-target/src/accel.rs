//! KVM or TCG: the same rule as the fixtures and the validator. KVM only when
//! `/dev/kvm` opens read-write AND the CPU flags show `vmx` or `svm`; a paravirtualised
//! nested KVM without them (`kvm_pvm`, FIELD-NOTES §1) accepts `KVM_CREATE_VM` and then
//! hangs real guests, so the device alone is not proof.

use serde::{Deserialize, Serialize};

/// The accelerator used for the libguestfs appliance and written into the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// Whether KVM can really run guests here.
pub(crate) fn kvm_usable() -> bool {
    let dev_ok = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    dev_ok
        && std::fs::read_to_string("/proc/cpuinfo")
            .map(|s| cpu_has_virt(&s))
            .unwrap_or(false)
}

fn cpu_has_virt(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .flat_map(|l| l.split_whitespace())
        .any(|f| f == "vmx" || f == "svm")
}

/// The accelerator to use: the override when given, else detection. The second value
/// is a warning for stderr when detection fell back to TCG.
pub fn choose(requested: Option<Accel>) -> (Accel, Option<String>) {
    match requested {
        Some(a) => (a, None),
        None if kvm_usable() => (Accel::Kvm, None),
        None => (
            Accel::Tcg,
            Some(
                "KVM not usable here (/dev/kvm not read-write or no vmx/svm CPU flag): \
                 using TCG, which is much slower"
                    .to_string(),
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virt_flag_needed_in_a_flags_line() {
        assert!(cpu_has_virt("processor : 0\nflags : fpu vme sse vmx\n"));
        assert!(cpu_has_virt("flags\t\t: svm lm\n"));
        assert!(!cpu_has_virt(
            "flags : fpu vme hypervisor\nmodel name : vmx-like\n"
        ));
    }

    #[test]
    fn override_wins_without_warning() {
        assert_eq!(choose(Some(Accel::Kvm)), (Accel::Kvm, None));
        assert_eq!(choose(Some(Accel::Tcg)), (Accel::Tcg, None));
    }
}
