//! `v2k inspect vsphere://…` and `v2k vsphere thumbprint` against VMware's simulator
//! (the harness of vsphere/tests/common): JSON output, exit codes, the password taken
//! from the environment or a 0600 file, and never printed — nor the session cookie.

#[path = "../../vsphere/tests/common/mod.rs"]
mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use common::*;

fn v2k() -> Command {
    Command::new(env!("CARGO_BIN_EXE_v2k"))
}

fn addr(sim: &Vcsim, vm: &str) -> String {
    format!(
        "vsphere://{}@127.0.0.1:{}/DC0/vm/{vm}",
        USER.replace('@', "%40"),
        sim.port
    )
}

#[test]
fn inspect_reads_a_vm_from_vcsim_without_showing_secrets() {
    let sim = Vcsim::start();
    let pki = pki();
    let out = v2k()
        .args(["inspect", "--json", "--ca-file"])
        .arg(&pki.ca)
        .arg(addr(&sim, "DC0_H0_VM0"))
        .env("V2K_VSPHERE_PASSWORD", PASSWORD)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The simulator's VMs are powered on: a critical concern, exit status 1.
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    let first: serde_json::Value = serde_json::from_str(stdout.lines().next().unwrap()).unwrap();
    assert_eq!(first["type"], "vm");
    assert_eq!(first["name"], "DC0_H0_VM0");
    assert_eq!(first["source"]["kind"], "vsphere");
    assert_eq!(first["concerns"][0]["id"], "powered-on");
    for text in [&stdout, &stderr] {
        assert!(!text.contains(PASSWORD), "password shown: {text}");
        assert!(
            !text.contains("vmware_soap_session"),
            "cookie shown: {text}"
        );
        assert!(
            !text.to_ascii_lowercase().contains("authorization"),
            "{text}"
        );
    }

    // A password file must be private.
    let d = tempfile::tempdir().unwrap();
    let pw = d.path().join("pw");
    std::fs::write(&pw, format!("{PASSWORD}\n")).unwrap();
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o644)).unwrap();
    let run = |extra: &[&str]| {
        v2k()
            .args(["inspect", "--password-file"])
            .arg(&pw)
            .args(extra)
            .arg(addr(&sim, "DC0_H0_VM1"))
            .env_remove("V2K_VSPHERE_PASSWORD")
            .output()
            .unwrap()
    };
    let o = run(&["--insecure"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("chmod 600"));
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
    let o = run(&["--insecure"]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("--insecure"),
        "insecure mode warns: {stderr}"
    );
    assert!(!stderr.contains(PASSWORD));
    // A wrong pin is fatal.
    let o = run(&["--thumbprint", &"00".repeat(32)]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("does not match"));
}

#[test]
fn thumbprint_prints_the_servers_certificate_hash() {
    let sim = Vcsim::start();
    let out = v2k()
        .args(["vsphere", "thumbprint"])
        .arg(format!("127.0.0.1:{}", sim.port))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        pki().thumbprint.to_string()
    );
}

/// A wave plan whose source is a pattern: `wave check` lists every VM it matches, each
/// read over SOAP under its own name (the simulator's VMs are powered on, so each
/// carries that concern and the check exits 1; information instead when the plan cuts
/// them over). A pattern that matches nothing is a
/// plan error (exit 2), as is a server the plan cannot reach.
#[test]
fn a_wave_plan_pattern_expands_into_the_vms_it_matches() {
    let sim = Vcsim::start();
    let pki = pki();
    let d = tempfile::tempdir().unwrap();
    let plan = d.path().join("plan.yaml");
    let write_with = |pattern: &str, more: &str| {
        std::fs::write(
            &plan,
            format!(
                "version: 1\nvsphere:\n  \"127.0.0.1:{}\":\n    ca-file: {}\n\
                 waves:\n  - name: w\n    vms:\n      - source: {}\n        validate: false\n{more}",
                sim.port,
                pki.ca.display(),
                addr(&sim, pattern)
            ),
        )
        .unwrap();
    };
    let write = |pattern: &str| write_with(pattern, "");
    let check = || {
        v2k()
            .args(["wave", "check", "--json"])
            .arg(&plan)
            .env("V2K_VSPHERE_PASSWORD", PASSWORD)
            .output()
            .unwrap()
    };
    write("DC0_H0_VM*");
    let o = check();
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stdout}\n{stderr}");
    let c: serde_json::Value = serde_json::from_str(stdout.lines().next().unwrap()).unwrap();
    let vms = c["vms"].as_array().unwrap();
    let names: Vec<&str> = vms.iter().map(|v| v["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["DC0_H0_VM0", "DC0_H0_VM1"], "{c:#}");
    for v in vms {
        assert!(
            v["source"]
                .as_str()
                .unwrap()
                .ends_with(&format!("/DC0/vm/{}", v["name"].as_str().unwrap())),
            "{v:#}"
        );
        assert!(v["error"].as_str().unwrap().contains("powered-on"), "{v:#}");
        assert!(v["disks"].as_u64().unwrap() > 0, "{v:#}");
    }

    // The plan cuts them over: their power is expected (the cutover shuts them down
    // before their disks are read), information rather than a refusal.
    write_with("DC0_H0_VM*", "        cutover: true\n");
    let o = check();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{stdout}");
    let c: serde_json::Value = serde_json::from_str(stdout.lines().next().unwrap()).unwrap();
    for v in c["vms"].as_array().unwrap() {
        assert!(v["error"].is_null(), "{v:#}");
        let on = v["concerns"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"] == "powered-on")
            .expect("still told");
        assert_eq!(on["severity"], "info", "{v:#}");
    }

    write("nomatch*");
    let o = check();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("plan.yaml:8:") && stderr.contains("matches no VM"),
        "{stderr}"
    );
}
