//! Everything a plan refers to, checked before anything runs: every VM source exists,
//! every hook program is an executable file, every bridge in the network map exists on
//! this host; and each VM read through `v2k_inventory::load` for its pre-flight
//! concerns, its disk count (for `limits.disks`) and an estimate of the bytes it
//! will write (for the free-space check), and across the plan's VMs for the concerns
//! only they show together (one domain name, one disk file: pre-flight's
//! `assess_together`). Reference problems are plan errors; a VM
//! whose description cannot be read or carries a critical concern is reported, and
//! fails when it runs, without stopping the others.

use std::path::{Path, PathBuf};

use serde::Serialize;
use v2k_inventory::model::{DiskLocation, Severity, Vm};
use v2k_migrate::NetTarget;

use crate::plan::{line_of, Plan, Problem, Sessions, VsphereRef};

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct CheckReport {
    /// Plan errors: when any, nothing may run.
    pub problems: Vec<Problem>,
    pub vms: Vec<VmCheck>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct VmCheck {
    pub wave: String,
    pub name: String,
    pub source: PathBuf,
    pub out: PathBuf,
    pub disks: usize,
    /// Bytes the VM's outputs may take: the sum of its source disks' allocated bytes.
    pub estimated_bytes: u64,
    /// The ESXi host its disks are read from: the plan's `esxi-host:`, else what the
    /// vSphere inventory says (none for a file source).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub esxi_host: Option<String>,
    pub concerns: Vec<serde_json::Value>,
    /// VMware networks of its NICs that the network map does not name (they get
    /// isolated user networking).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unmapped_networks: Vec<String>,
    /// Why the VM will fail, when it is already known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// `live: true`: imported live (docs/live-import.md).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub live: bool,
    /// What its report's "before" will be (docs/evidence.md): the plan's baseline file,
    /// a reading from vSphere on the first attempt, or why there will be none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline: Option<String>,
}

/// Where a VM's baseline comes from, as the runner will find it.
fn baseline_of(v: &crate::plan::VmPlan) -> Option<String> {
    let file = v
        .baseline_dir
        .as_ref()
        .map(|d| d.join(format!("{}.baseline.json", v.name)));
    let booted = "measured by booting the source on the first attempt (baseline-boot)";
    match (file, v.vsphere.is_some()) {
        (Some(f), _) if f.is_file() => Some(f.display().to_string()),
        (Some(f), false) if v.baseline_boot => {
            Some(format!("{booted} ({} not found)", f.display()))
        }
        (None, false) if v.baseline_boot => Some(booted.into()),
        (Some(f), true) => Some(format!(
            "read from vSphere on the first attempt ({} not found)",
            f.display()
        )),
        (Some(f), false) => Some(format!("none: {} not found", f.display())),
        (None, true) => Some("read from vSphere on the first attempt".into()),
        (None, false) => None,
    }
}

impl CheckReport {
    /// 0 all clear, 1 some VM will fail, 2 plan error.
    pub fn exit_code(&self) -> i32 {
        if !self.problems.is_empty() {
            crate::EXIT_ERROR
        } else if self.vms.iter().any(|v| v.error.is_some()) {
            crate::EXIT_FAILED
        } else {
            crate::EXIT_OK
        }
    }

    pub fn vm(&self, name: &str) -> Option<&VmCheck> {
        self.vms.iter().find(|v| v.name == name)
    }
}

/// Checks `plan`'s references and reads every VM.
pub fn check(plan: &Plan) -> CheckReport {
    let mut problems = Vec::new();
    let base = plan.path.parent().unwrap_or(Path::new("/")).to_path_buf();
    for (name, t) in &plan.network_map.0 {
        if let NetTarget::Bridge(b) = t {
            if !Path::new("/sys/class/net").join(b).exists() {
                problems.push(Problem {
                    line: line_of(&plan.text, name),
                    message: format!("networks: {name:?} maps to bridge {b:?}, which does not exist on this host"),
                });
            }
        }
    }
    let mut vms = Vec::new();
    // The VMs read, and the index of each one's check in `vms`.
    let mut models: Vec<Vm> = Vec::new();
    let mut read: Vec<usize> = Vec::new();
    let mut sessions = Sessions::default();
    for w in &plan.waves {
        for v in &w.vms {
            if v.vsphere.is_none() && !v.source.is_file() {
                problems.push(Problem {
                    line: v.line,
                    message: format!(
                        "VM {}: source {} does not exist or is not a file",
                        v.name,
                        v.source.display()
                    ),
                });
            }
            for (which, h) in [("pre", &v.pre), ("post", &v.post)] {
                if let Some(h) = h {
                    if crate::hooks::resolve_program(&h.command[0], &base).is_none() {
                        problems.push(Problem {
                            line: line_of(&plan.text, &h.command[0]).or(v.line),
                            message: format!(
                                "VM {}: {which} hook {:?} is not an executable file",
                                v.name, h.command[0]
                            ),
                        });
                    }
                }
            }
            let mut c = VmCheck {
                wave: w.name.clone(),
                name: v.name.clone(),
                source: v.source.clone(),
                out: v.out.clone(),
                disks: 0,
                estimated_bytes: 0,
                esxi_host: v.esxi_host.clone(),
                concerns: Vec::new(),
                unmapped_networks: Vec::new(),
                error: None,
                live: v.live.is_some(),
                baseline: baseline_of(v),
            };
            let loaded: Option<Result<Vec<Vm>, String>> = if let Some(r) = &v.vsphere {
                Some(read_vsphere(&mut sessions, r))
            } else if v.source.is_file() {
                Some(
                    v2k_migrate::stages::load(&v.source, v.verify_manifest)
                        .map_err(|e| v2k_inventory::one_line(&e)),
                )
            } else {
                None
            };
            if let Some(loaded) = loaded {
                match loaded {
                    Err(e) => c.error = Some(format!("cannot be read: {e}")),
                    Ok(list) => {
                        let vm = match &v.ovf_vm {
                            Some(n) => list.into_iter().find(|x| &x.name == n),
                            None if list.len() == 1 => list.into_iter().next(),
                            None => {
                                c.error = Some(format!(
                                    "describes {} VMs; choose one with `ovf-vm:`",
                                    list.len()
                                ));
                                None
                            }
                        };
                        match vm {
                            None if c.error.is_none() => {
                                c.error = Some("the named OVF VM is not in the file".into())
                            }
                            None => {}
                            Some(mut vm) => {
                                if v.cutover.is_some() || v.live.is_some() {
                                    v2k_migrate::cutover::expect_shutdown(&mut vm);
                                }
                                c.disks = vm.disks.len();
                                if c.esxi_host.is_none() {
                                    c.esxi_host = vm.vsphere.as_ref().and_then(|s| s.host.clone());
                                }
                                c.estimated_bytes = vm.disks.iter().map(estimate).sum();
                                for n in vm.nics.iter().filter_map(|n| n.network.as_ref()) {
                                    if !plan.network_map.0.iter().any(|(k, _)| k == n)
                                        && !c.unmapped_networks.contains(n)
                                    {
                                        c.unmapped_networks.push(n.clone());
                                    }
                                }
                                read.push(vms.len());
                                models.push(vm);
                            }
                        }
                    }
                }
            }
            vms.push(c);
        }
    }
    // What only shows across the plan's VMs (one disk file in two; two with one
    // domain name when the plan delivers them all to one destination, where the
    // domains meet), then each VM's concerns and whether they refuse it.
    use v2k_inventory::preflight::Together;
    let delivered = plan
        .waves
        .iter()
        .flat_map(|w| &w.vms)
        .any(|v| v.deliver.is_some());
    let which = if delivered {
        Together::All
    } else {
        Together::DisksOnly
    };
    v2k_inventory::preflight::assess_together(&mut models, which);
    for (i, vm) in read.into_iter().zip(models) {
        let c = &mut vms[i];
        c.concerns = vm
            .concerns
            .iter()
            .map(|x| serde_json::to_value(x).unwrap_or_default())
            .collect();
        let crit: Vec<String> = vm
            .concerns
            .iter()
            .filter(|x| x.severity == Severity::Critical)
            .map(|x| format!("{} ({})", x.id, x.message))
            .collect();
        if !crit.is_empty() {
            c.error = Some(format!("critical pre-flight concerns: {}", crit.join("; ")));
        }
    }
    CheckReport { problems, vms }
}

/// A vSphere VM, read over the server's session.
fn read_vsphere(sessions: &mut Sessions, r: &VsphereRef) -> Result<Vec<Vm>, String> {
    let client = sessions.client(r).map_err(|e| e.to_string())?;
    v2k_migrate::vsphere::get_vm(client, &r.address)
        .map(|vm| vec![vm])
        .map_err(|e| e.to_string())
}

/// What a disk's output may take: its allocated bytes when known, else the size of
/// its file, else its capacity.
fn estimate(d: &v2k_inventory::model::Disk) -> u64 {
    if let Some(p) = d.populated_size {
        return p;
    }
    match &d.location {
        DiskLocation::File { path, .. } => std::fs::metadata(path).map(|m| m.len()).unwrap_or(0),
        _ => d.capacity.unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_sources_and_hooks_are_plan_errors_with_lines() {
        let d = tempfile::tempdir().unwrap();
        let text = "version: 1\nwaves:\n  - name: w\n    vms:\n      - source: nothere.vmx\n        hooks:\n          pre: { command: [./nohook.sh] }\n";
        let p = crate::plan::parse(text, &d.path().join("p.yaml")).unwrap();
        let r = check(&p);
        assert_eq!(r.exit_code(), crate::EXIT_ERROR);
        assert!(
            r.problems
                .iter()
                .any(|p| p.line == Some(5) && p.message.contains("does not exist")),
            "{:?}",
            r.problems
        );
        assert!(
            r.problems
                .iter()
                .any(|p| p.line == Some(7) && p.message.contains("not an executable")),
            "{:?}",
            r.problems
        );
    }

    #[test]
    fn two_delivered_plan_vms_that_become_one_domain_name_fail_the_check() {
        let d = tempfile::tempdir().unwrap();
        for (file, name) in [("a.vmx", "db 1"), ("b.vmx", "db/1")] {
            std::fs::write(
                d.path().join(file),
                format!("displayName = \"{name}\"\nnumvcpus = \"1\"\nmemsize = \"512\"\nguestOS = \"debian12-64\"\n"),
            )
            .unwrap();
        }
        let text = "version: 1\nwaves:\n  - name: w\n    vms:\n      - source: a.vmx\n      - source: b.vmx\n";
        // Without a destination their domains never meet.
        let p = crate::plan::parse(text, &d.path().join("p.yaml")).unwrap();
        let r = check(&p);
        assert!(r.vms.iter().all(|v| v.error.is_none()), "{:?}", r.vms);
        let text = format!("target:\n  uri: qemu:///system\n  pool: vms\n{text}");
        let p = crate::plan::parse(&text, &d.path().join("p.yaml")).unwrap();
        let r = check(&p);
        assert!(r.problems.is_empty(), "{:?}", r.problems);
        for v in &r.vms {
            let e = v.error.as_deref().unwrap_or_default();
            assert!(
                e.contains("domain-name-collision") && e.contains("\"db_1\""),
                "{v:?}"
            );
        }
        assert_eq!(r.exit_code(), crate::EXIT_FAILED);
    }

    #[test]
    fn an_unreadable_vm_is_a_vm_error_not_a_plan_error() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("bad.vmx"), b"\x00\x01 not a vmx").unwrap();
        let text = "version: 1\nwaves:\n  - name: w\n    vms:\n      - source: bad.vmx\n";
        let p = crate::plan::parse(text, &d.path().join("p.yaml")).unwrap();
        let r = check(&p);
        assert!(r.problems.is_empty(), "{:?}", r.problems);
        assert!(r.vms[0].error.is_some(), "{:?}", r.vms[0]);
        assert_eq!(r.exit_code(), crate::EXIT_FAILED);
    }
}
