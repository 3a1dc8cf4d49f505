//! A vCenter or ESXi VM as a migration source: the model read over SOAP, the disks
//! streamed from the datastore into verified QCOW2 with no temporary full copy
//! (`v2k-vsphere`). `v2k migrate vsphere://…` and a wave plan's `vsphere://` sources
//! both come through here, so they connect, read and download the same way.

use std::path::PathBuf;

use v2k_converters::convert as conv;
use v2k_converters::manifest::Manifest;
use v2k_inventory::model::Vm;
pub use v2k_vsphere::address::PASSWORD_ENV;
pub use v2k_vsphere::{Address, Client, ConnectSettings, Error};

use crate::report::Resume;
use crate::{BoxError, RemoteSource, SourceProgress};

/// Hands the datastore's resumes to the pipeline's record (its byte progress is the
/// converter's, reported separately).
struct Resumes<'a>(&'a dyn SourceProgress);

impl v2k_vsphere::datastore::DownloadProgress for Resumes<'_> {
    fn progress(&self, _: usize, _: u64, _: u64, _: f64) {}
    fn resumed(&self, disk: usize, at: u64, reason: &str) {
        self.0.resumed(Resume {
            disk,
            at,
            reason: reason.to_string(),
        });
    }
}

/// The VM at `address` (not a pattern), read over `client`'s session.
pub fn get_vm(client: &Client, address: &Address) -> Result<Vm, Error> {
    v2k_vsphere::inventory::get_vm(client, &address.inventory_path)
}

/// Every VM an address names: one, or all that match its pattern (`…/vm/web*`).
pub fn vms_at(client: &Client, address: &Address) -> Result<Vec<Vm>, Error> {
    v2k_vsphere::inventory::vms_at(client, address)
}

/// One VM on a vSphere server, with a logged-in session (logged out on drop).
pub struct VsphereSource {
    client: Client,
    address: Address,
    /// Kept for live import, whose NBD server opens its own sessions (the password is
    /// read again from where these settings say, never stored here).
    settings: ConnectSettings,
}

impl VsphereSource {
    /// Connects to `address`'s server as its user. A pattern (`web*`) is refused:
    /// a migration takes exactly one VM.
    pub fn connect(
        address: Address,
        settings: &ConnectSettings,
    ) -> Result<VsphereSource, v2k_vsphere::Error> {
        if address.is_pattern() {
            return Err(v2k_vsphere::Error::Usage(format!(
                "{}: a migration takes one VM, not a pattern (list them with `v2k inspect`)",
                address.display_without_user()
            )));
        }
        Ok(VsphereSource {
            client: settings.connect(&address)?,
            address,
            settings: settings.clone(),
        })
    }

    pub fn address(&self) -> &Address {
        &self.address
    }

    /// The VM's last day of performance (`now`: Unix seconds), as `v2k baseline`
    /// reads it (docs/evidence.md).
    pub fn baseline(&self, now: u64) -> Result<v2k_vsphere::perf::BaselineFile, Error> {
        let vm = get_vm(&self.client, &self.address)?;
        v2k_vsphere::perf::BaselineFile::take(&self.client, &vm, now)
    }
}

impl RemoteSource for VsphereSource {
    fn describe(&self) -> String {
        self.address.display_without_user()
    }

    fn power(&self) -> Option<&dyn crate::cutover::SourcePower> {
        Some(self)
    }

    fn live_access(&self, vm: &Vm) -> Option<Result<crate::live::LiveAccess, BoxError>> {
        let access = || -> Result<crate::live::LiveAccess, BoxError> {
            let jobs = v2k_vsphere::convert::disk_jobs(vm, |_| PathBuf::new())?;
            Ok(crate::live::LiveAccess {
                options: v2k_vsphere::Options {
                    host: self.address.host.clone(),
                    port: self.address.port,
                    tls: self.settings.tls_mode()?,
                },
                credentials: v2k_vsphere::Credentials {
                    user: self.address.user.clone(),
                    password: v2k_vsphere::address::password(
                        self.settings.password_file.as_deref(),
                    )?,
                },
                disks: jobs.into_iter().map(|j| j.source).collect(),
            })
        };
        Some(access())
    }

    fn load(&self) -> Result<Vm, BoxError> {
        Ok(v2k_vsphere::inventory::get_vm(
            &self.client,
            &self.address.inventory_path,
        )?)
    }

    fn convert(
        &self,
        vm: &Vm,
        outputs: &[PathBuf],
        progress: &dyn SourceProgress,
    ) -> Vec<Result<Manifest, BoxError>> {
        let jobs = match v2k_vsphere::convert::disk_jobs(vm, |i| outputs[i].clone()) {
            Ok(j) => j,
            Err(e) => {
                let e: BoxError = e.into();
                let msg = e.to_string();
                return outputs.iter().map(|_| Err(msg.clone().into())).collect();
            }
        };
        let opts = conv::Options {
            // A rerun reconverts a disk whose recorded hash no longer verifies; the
            // pipeline decides that, the converter only must not refuse the path.
            overwrite: true,
            ..conv::Options::default()
        };
        v2k_vsphere::convert::download_and_convert(
            &self.client,
            &jobs,
            &opts,
            v2k_vsphere::convert::DEFAULT_PER_HOST,
            &Resumes(progress),
            progress,
        )
        .into_iter()
        .map(|r| r.map_err(BoxError::from))
        .collect()
    }
}

/// How long a power-on or power-off task may take before v2k says so (vCenter
/// answers in seconds; a minute covers a busy host's queue).
const POWER_ON_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

impl VsphereSource {
    fn vm_ref(&self) -> Result<v2k_vsphere::client::MoRef, v2k_vsphere::Error> {
        self.client
            .find_by_inventory_path(&self.address.inventory_path)?
            .ok_or_else(|| {
                v2k_vsphere::Error::Usage(format!(
                    "{}: no such VM",
                    self.address.display_without_user()
                ))
            })
    }

    /// `runtime.powerState` now: `poweredOn`, `poweredOff` or `suspended`.
    pub fn power_state(&self) -> Result<String, v2k_vsphere::Error> {
        let vm = self.vm_ref()?;
        let spec = v2k_vsphere::client::PropertySpec {
            kind: "VirtualMachine".into(),
            paths: vec!["runtime.powerState".into()],
        };
        let o = self
            .client
            .block_on(self.client.session().retrieve_one(&vm, &spec))?;
        Ok(o.text("runtime.powerState")
            .unwrap_or("")
            .trim()
            .to_string())
    }
}

impl crate::cutover::SourcePower for VsphereSource {
    fn describe(&self) -> String {
        self.address.display_without_user()
    }

    fn is_powered_on(&self) -> Result<bool, BoxError> {
        Ok(self.power_state()? == "poweredOn")
    }

    fn power_on(&self) -> Result<(), BoxError> {
        let vm = self.vm_ref()?;
        let r = self.client.call("PowerOnVM_Task", &vm, "")?;
        let task = r
            .child("returnval")
            .and_then(v2k_vsphere::client::MoRef::from_element)
            .ok_or_else(|| BoxError::from("PowerOnVM_Task: no task in the answer"))?;
        self.client.wait_for_task(&task, POWER_ON_TIMEOUT)?;
        Ok(())
    }

    fn shutdown_guest(&self) -> Result<(), BoxError> {
        let vm = self.vm_ref()?;
        self.client.call("ShutdownGuest", &vm, "")?;
        Ok(())
    }

    fn power_off(&self) -> Result<(), BoxError> {
        let vm = self.vm_ref()?;
        let r = self.client.call("PowerOffVM_Task", &vm, "")?;
        let task = r
            .child("returnval")
            .and_then(v2k_vsphere::client::MoRef::from_element)
            .ok_or_else(|| BoxError::from("PowerOffVM_Task: no task in the answer"))?;
        self.client.wait_for_task(&task, POWER_ON_TIMEOUT)?;
        Ok(())
    }
}
