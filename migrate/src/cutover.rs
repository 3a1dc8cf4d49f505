//! Source cutover: a running vSphere source is shut down through VMware Tools
//! (`ShutdownGuest`), waited for, and powered off only when the caller says so
//! (`--force-power-off`); then the cold copy runs. The source is never deleted or
//! changed otherwise. A local VMX/OVF/OVA source needs nothing (the stage is skipped).
//!
//! The stage holds no state of its own: it asks the source's power state first, so a
//! run killed anywhere in it and run again finds the VM off and goes on (or shuts it
//! down again, had someone powered it on since).

use std::time::{Duration, Instant};

use crate::{BoxError, Event};

/// How often the power state is asked while waiting for the guest to shut down.
const POLL: Duration = Duration::from_secs(1);

/// A source VM whose power v2k can change (a vSphere VM; local files have none).
pub trait SourcePower {
    /// What the source is called in messages.
    fn describe(&self) -> String;
    /// Whether the VM is powered on now.
    fn is_powered_on(&self) -> Result<bool, BoxError>;
    /// Powers the VM on and waits for the task.
    fn power_on(&self) -> Result<(), BoxError>;
    /// Asks the guest to shut down (VMware Tools); returns without waiting.
    fn shutdown_guest(&self) -> Result<(), BoxError>;
    /// Powers the VM off (a hard stop) and waits for the task.
    fn power_off(&self) -> Result<(), BoxError>;
}

/// How to cut a running source over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cutover {
    /// How long the guest may take to shut down.
    pub timeout: Duration,
    /// Power the VM off when it did not shut down in time (else: refuse).
    pub force_power_off: bool,
}

/// Why the source was not cut over.
#[derive(Debug, thiserror::Error)]
pub enum CutoverError {
    #[error(
        "{source_name} did not shut down within {seconds} s; it is still running \
         (power it off yourself, or pass --force-power-off)"
    )]
    StillRunning { source_name: String, seconds: u64 },
    #[error("{what} {source_name}")]
    Source {
        what: &'static str,
        source_name: String,
        #[source]
        source: BoxError,
    },
}

/// Shuts `src` down for the copy; what happened, for the stage's detail.
pub fn cut_over(
    src: &dyn SourcePower,
    c: &Cutover,
    progress: &dyn Fn(Event),
) -> Result<String, CutoverError> {
    let name = src.describe();
    let fail = |what: &'static str| {
        let source_name = name.clone();
        move |source| CutoverError::Source {
            what,
            source_name,
            source,
        }
    };
    if !src
        .is_powered_on()
        .map_err(fail("reading the power state of"))?
    {
        return Ok(format!("{name} is powered off"));
    }
    progress(Event::Message(format!(
        "shutting {name} down through VMware Tools (up to {} s)",
        c.timeout.as_secs()
    )));
    src.shutdown_guest()
        .map_err(fail("asking the guest to shut down:"))?;
    let start = Instant::now();
    loop {
        if !src
            .is_powered_on()
            .map_err(fail("reading the power state of"))?
        {
            return Ok(format!(
                "{name} shut down through VMware Tools in {:.0} s",
                start.elapsed().as_secs_f64()
            ));
        }
        if start.elapsed() >= c.timeout {
            break;
        }
        std::thread::sleep(POLL.min(c.timeout.saturating_sub(start.elapsed())));
    }
    if !c.force_power_off {
        return Err(CutoverError::StillRunning {
            source_name: name,
            seconds: c.timeout.as_secs(),
        });
    }
    progress(Event::Message(format!(
        "{name} did not shut down within {} s: powering it off (--force-power-off)",
        c.timeout.as_secs()
    )));
    src.power_off().map_err(fail("powering off"))?;
    Ok(format!(
        "{name} did not shut down within {} s; powered off (--force-power-off)",
        c.timeout.as_secs()
    ))
}

/// Marks a running source's `powered-on` concern as expected when it will be cut over
/// first (a plan VM with `cutover:` or `live:`): the cutover shuts it down before its
/// disks are read, so it is information, not a refusal. Other concerns are untouched.
pub fn expect_shutdown(vm: &mut v2k_inventory::Vm) {
    for c in vm
        .concerns
        .iter_mut()
        .filter(|c| c.id == v2k_vsphere::inventory::POWERED_ON)
    {
        c.severity = v2k_inventory::model::Severity::Info;
        c.message = "VM is powered on: the cutover shuts it down before its disks are read".into();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    #[test]
    fn a_cut_over_sources_power_is_expected_and_other_concerns_stay() {
        use v2k_inventory::model::{Concern, Severity};
        let d = tempfile::tempdir().unwrap();
        let vmx = d.path().join("t.vmx");
        std::fs::write(&vmx, "config.version = \"8\"\nvirtualHW.version = \"14\"\n").unwrap();
        let mut vm = v2k_inventory::vmx::load(&vmx, &v2k_inventory::BuiltinProbe).unwrap();
        vm.concerns = vec![
            Concern {
                id: v2k_vsphere::inventory::POWERED_ON.into(),
                severity: Severity::Critical,
                subject: None,
                message: "VM is powered on".into(),
            },
            Concern {
                id: "other".into(),
                severity: Severity::Critical,
                subject: None,
                message: "m".into(),
            },
        ];
        expect_shutdown(&mut vm);
        assert_eq!(vm.concerns[0].severity, Severity::Info);
        assert!(vm.concerns[0].message.contains("the cutover shuts it down"));
        assert_eq!(vm.concerns[1].severity, Severity::Critical, "untouched");
    }

    /// A source that records the calls; `obeys` says whether the guest honours a
    /// shutdown request.
    struct Fake {
        on: RefCell<bool>,
        obeys: bool,
        calls: RefCell<Vec<&'static str>>,
    }

    impl SourcePower for Fake {
        fn describe(&self) -> String {
            "vm".into()
        }
        fn is_powered_on(&self) -> Result<bool, BoxError> {
            Ok(*self.on.borrow())
        }
        fn power_on(&self) -> Result<(), BoxError> {
            self.calls.borrow_mut().push("power-on");
            *self.on.borrow_mut() = true;
            Ok(())
        }
        fn shutdown_guest(&self) -> Result<(), BoxError> {
            self.calls.borrow_mut().push("shutdown-guest");
            if self.obeys {
                *self.on.borrow_mut() = false;
            }
            Ok(())
        }
        fn power_off(&self) -> Result<(), BoxError> {
            self.calls.borrow_mut().push("power-off");
            *self.on.borrow_mut() = false;
            Ok(())
        }
    }

    fn fake(on: bool, obeys: bool) -> Fake {
        Fake {
            on: RefCell::new(on),
            obeys,
            calls: RefCell::new(Vec::new()),
        }
    }

    const SHORT: Cutover = Cutover {
        timeout: Duration::from_millis(50),
        force_power_off: false,
    };

    #[test]
    fn a_guest_that_ignores_the_shutdown_is_refused_without_force_and_left_running() {
        let f = fake(true, false);
        let e = cut_over(&f, &SHORT, &|_| {}).unwrap_err();
        assert!(
            matches!(e, CutoverError::StillRunning { seconds: 0, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("--force-power-off"), "{e}");
        assert!(*f.on.borrow());
        assert_eq!(*f.calls.borrow(), ["shutdown-guest"]);
    }

    #[test]
    fn force_powers_off_a_guest_that_ignores_the_shutdown() {
        let f = fake(true, false);
        let c = Cutover {
            force_power_off: true,
            ..SHORT
        };
        let d = cut_over(&f, &c, &|_| {}).unwrap();
        assert!(d.contains("powered off (--force-power-off)"), "{d}");
        assert!(!*f.on.borrow());
        assert_eq!(*f.calls.borrow(), ["shutdown-guest", "power-off"]);
    }

    #[test]
    fn a_cooperative_guest_is_shut_down_and_an_off_one_left_alone() {
        let f = fake(true, true);
        let d = cut_over(&f, &SHORT, &|_| {}).unwrap();
        assert!(d.contains("shut down through VMware Tools"), "{d}");
        assert_eq!(*f.calls.borrow(), ["shutdown-guest"]);
        let f = fake(false, true);
        assert_eq!(cut_over(&f, &SHORT, &|_| {}).unwrap(), "vm is powered off");
        assert!(f.calls.borrow().is_empty());
    }
}
