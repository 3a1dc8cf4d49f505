//! `vsphere://` pattern sources (`…/vm/web/*`, `…/vm/*/db?`) replaced by the VMs they
//! match, before anything is checked or run: one plan entry per VM, named after the
//! VM, with the entry's settings. A pattern that matches nothing, a server that cannot
//! be reached, or two VMs that would get one name are plan problems: a wave that
//! silently shrinks is worse than one that does not start.

use std::collections::BTreeSet;
use std::path::PathBuf;

use crate::plan::{valid_name, Plan, Problem, Sessions, VsphereRef};

/// Longest VM name kept (the plan's own limit on names).
const MAX_NAME: usize = 128;

/// Expands every pattern entry of `plan` in place; returns the problems (the plan
/// must not run when there are any).
pub fn expand(plan: &mut Plan) -> Vec<Problem> {
    let mut problems = Vec::new();
    if !plan
        .waves
        .iter()
        .flat_map(|w| &w.vms)
        .any(|v| v.is_pattern())
    {
        return problems;
    }
    let concrete = || {
        plan.waves
            .iter()
            .flat_map(|w| &w.vms)
            .filter(|v| !v.is_pattern())
    };
    let mut names: BTreeSet<String> = concrete().map(|v| v.name.clone()).collect();
    let mut outs: BTreeSet<PathBuf> = concrete().map(|v| v.out.clone()).collect();
    let mut sessions = Sessions::default();
    let run_dir = plan.run_dir.clone();
    for w in &mut plan.waves {
        let mut vms = Vec::with_capacity(w.vms.len());
        for v in std::mem::take(&mut w.vms) {
            let Some(r) = v.vsphere.clone().filter(|_| v.is_pattern()) else {
                vms.push(v);
                continue;
            };
            let a = &r.address;
            let mut bad = |message: String| {
                problems.push(Problem {
                    line: v.line,
                    message,
                })
            };
            let found = sessions
                .client(&r)
                .map_err(|e| e.to_string())
                .and_then(|c| v2k_migrate::vsphere::vms_at(c, a).map_err(|e| e.to_string()));
            let list = match found {
                Ok(l) => l,
                Err(e) => {
                    bad(format!("source {}: {e}", a.display_without_user()));
                    continue;
                }
            };
            if list.is_empty() {
                bad(format!(
                    "source {}: the pattern matches no VM",
                    a.display_without_user()
                ));
            }
            for vm in list {
                let Some(path) = vm.vsphere.as_ref().and_then(|x| x.inventory_path.clone()) else {
                    bad(format!(
                        "VM {:?}: the server gave no inventory path",
                        vm.name
                    ));
                    continue;
                };
                let name = plain_name(&vm.name);
                if !valid_name(&name) {
                    bad(format!("VM {:?} ({path}): no usable name", vm.name));
                    continue;
                }
                if !names.insert(name.clone()) {
                    bad(format!(
                        "VM name {name:?} (of {path}, matched by {}) appears twice; list one of them on its own with a `name:`",
                        a.display_without_user()
                    ));
                    continue;
                }
                let out = run_dir.join("vms").join(&name).join("out");
                if !outs.insert(out.clone()) {
                    bad(format!(
                        "VM {name}: output directory {} is shared with another VM",
                        out.display()
                    ));
                    continue;
                }
                let mut address = a.clone();
                address.inventory_path = path;
                let mut one = v.clone();
                one.name = name;
                one.out = out;
                one.source = PathBuf::from(address.display_without_user());
                one.vsphere = Some(VsphereRef {
                    address,
                    settings: r.settings.clone(),
                });
                vms.push(one);
            }
        }
        w.vms = vms;
    }
    problems
}

/// A vSphere VM name as a plan name: letters, digits, `.`, `_` and `-` kept, anything
/// else (spaces, `%`, non-ASCII) becomes `-`; at most [`MAX_NAME`] characters.
pub fn plain_name(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(MAX_NAME)
        .collect();
    if out.chars().all(|c| c == '.') {
        out = out.replace('.', "-");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vsphere_names_become_plain_plan_names() {
        assert_eq!(plain_name("web01"), "web01");
        assert_eq!(plain_name("App Server (prod)"), "App-Server--prod-");
        assert_eq!(plain_name("dB%2F1"), "dB-2F1");
        assert_eq!(plain_name("é"), "-");
        assert_eq!(plain_name(".."), "--");
        assert_eq!(plain_name(&"x".repeat(300)).len(), MAX_NAME);
        assert!(valid_name(&plain_name("any thing/at all")));
    }

    #[test]
    fn a_plan_without_patterns_is_left_alone_and_never_connects() {
        let text = "version: 1\nwaves:\n  - name: w\n    vms:\n      - source: vsphere://u@vc.invalid/DC/vm/a\n";
        let mut p = crate::plan::parse(text, std::path::Path::new("/p/p.yaml")).unwrap();
        let before = p.waves[0].vms.len();
        assert!(expand(&mut p).is_empty());
        assert_eq!(p.waves[0].vms.len(), before);
    }
}
