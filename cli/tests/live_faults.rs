//! `v2k migrate vsphere://… --live` when things go wrong (issue 19, scope 3), run as
//! the real binary against VMware's simulator behind a test proxy that can take the
//! datastore down (live/tests/support/session_proxy.rs): an outage longer than the
//! server's hold mid-stream is waited out, the domain resumed and the pull started
//! again, and the result is byte-for-byte the source; an outage past the outage limit
//! fails clearly, stops the domain and leaves the source off; a guest that reads data
//! not streamed yet during an outage pauses (`rerror=stop`) and is resumed when the
//! datastore is back; `v2k rollback` during a stream stops the target before it powers
//! the source on.
//!
//! No guest OS boots here: each VM's disk is patterned bytes, so SeaBIOS finds nothing
//! to boot and waits (seconds under TCG), which is all a stream needs (the domain must
//! run for libvirt's block jobs); the pause test's disk starts with an 84-byte boot
//! sector that only reads the disk ([`READER`]). `--no-inject --no-validate` keep libguestfs and the
//! agent out. Each test runs its own simulator and names its VM and domain with its
//! own id.

#[path = "../../vsphere/tests/common/mod.rs"]
mod common;
#[path = "support/libvirt.rs"]
mod libvirt;
#[path = "../../live/tests/support/session_proxy.rs"]
mod session_proxy;

use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use libvirt::virsh;
use session_proxy::{go_down, Faults, SessionProxy};

/// The disk: 24 MiB pulled at 1 MiB/s (`--live-bandwidth 1`) streams for about 24 s,
/// long enough to take the datastore down in the middle.
const DISK: usize = 24 << 20;
/// `--live-hold`: the server holds a read this long before QEMU's request fails.
const HOLD: u64 = 3;

/// The test's domain, stopped and undefined on drop.
struct Domain(String);

impl Drop for Domain {
    fn drop(&mut self) {
        let _ = virsh(&["destroy", &self.0]);
        let _ = virsh(&["undefine", &self.0, "--nvram"]);
    }
}

/// A VM of the simulator with one flat disk of patterned bytes, powered on; its flat
/// extent's path on this host.
fn vm_with_patterned_disk(sim: &Vcsim, name: &str) -> PathBuf {
    vm_with_disk(sim, name, &pattern(DISK, 29))
}

/// A VM of the simulator with one flat disk holding `data`, powered on; its flat
/// extent's path on this host.
fn vm_with_disk(sim: &Vcsim, name: &str, data: &[u8]) -> PathBuf {
    put_flat_disk(sim, name, data);
    let c = sim.client();
    create_vm_with_disks(
        &c,
        name,
        &[(format!("[LocalDS_0] {name}/{name}.vmdk"), data.len() as u64)],
        "00:50:56:01:02:03",
    );
    power_on(&c, name);
    datastore_dir(sim)
        .join(name)
        .join(format!("{name}-flat.vmdk"))
}

/// A scratch directory QEMU's user can pass through, and the run directory in it.
fn scratch() -> (tempfile::TempDir, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let run = t.path().join("run");
    (t, run)
}

/// `v2k migrate --live` of `name` through the proxy, in the background.
fn start_live(proxy: &SessionProxy, name: &str, t: &Path, extra: &[&str]) -> Child {
    let address = format!(
        "vsphere://{}@127.0.0.1:{}/DC0/vm/{name}",
        USER.replace('@', "%40"),
        proxy.port
    );
    Command::new(env!("CARGO_BIN_EXE_v2k"))
        .arg("migrate")
        .arg(&address)
        .arg("--out")
        .arg(t.join("run"))
        .arg("--ca-file")
        .arg(&pki().ca)
        .args(["--live", "--no-inject", "--no-validate"])
        .args(if extra.contains(&"--live-bandwidth") {
            &[][..]
        } else {
            &["--live-bandwidth", "1"][..]
        })
        .args(["--live-hold", &HOLD.to_string()])
        .args(["--shutdown-timeout", "5", "--force-power-off"])
        .args(extra)
        .env("V2K_VSPHERE_PASSWORD", PASSWORD)
        .stdout(File::create(t.join("stdout")).unwrap())
        .stderr(File::create(t.join("stderr")).unwrap())
        .stdin(Stdio::null())
        .spawn()
        .unwrap()
}

/// `live.json`'s state ("" while there is none).
fn live_state(run: &Path) -> String {
    std::fs::read(run.join("live.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["state"].as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Waits until the pull of `vda` has copied at least `fraction` of the disk (the
/// stream is under way); fails if v2k ends first.
fn wait_for_pull(child: &mut Child, t: &Path, domain: &str, fraction: f64) {
    let wait = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            panic!("v2k ended ({s}) before the stream got going:\n{}", log(t));
        }
        assert!(
            wait.elapsed() < Duration::from_secs(300),
            "no stream after 300 s:\n{}",
            log(t)
        );
        if live_state(&t.join("run")) == "streaming" {
            let o = virsh(&["blockjob", domain, "vda", "--info", "--raw"]);
            let out = String::from_utf8_lossy(&o.stdout);
            let get = |k: &str| {
                out.lines()
                    .find_map(|l| l.trim().strip_prefix(k)?.parse::<f64>().ok())
            };
            if let (Some(cur), Some(end)) = (get("cur="), get("end=")) {
                if end > 0.0 && cur / end >= fraction {
                    return;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn log(t: &Path) -> String {
    format!(
        "stderr:\n{}\nstdout:\n{}\nlive.json: {}",
        std::fs::read_to_string(t.join("stderr")).unwrap_or_default(),
        std::fs::read_to_string(t.join("stdout")).unwrap_or_default(),
        std::fs::read_to_string(t.join("run/live.json")).unwrap_or_default()
    )
}

/// A boot sector that reads the disk's second half for ever: one sector every 100 ms
/// (BIOS INT 13h AH=42h, then INT 15h AH=86h waits 100,000 µs), LBA 49152 (24 MiB)
/// to 98303 (48 MiB) a 64 KiB cluster apart, then again. No OS: a guest that reads
/// data the pull has not copied yet, which is what pauses a domain (`rerror=stop`)
/// when the source is away. Assembled with GNU as (`.code16`, linked at 0x7c00):
///
/// ```text
///  7c00 31c0 8ed8 8ed0      xor ax,ax; mov ds,ax; mov ss,ax
///  7c06 bc007c fb           mov sp,0x7c00; sti
///  7c0a 8816427c            mov [drive],dl          (the BIOS's boot drive)
///  7c0e be447c b442         again: mov si,dap; mov ah,0x42
///  7c13 8a16427c cd13       mov dl,[drive]; int 0x13 (extended read, 1 sector)
///  7c19 b486 b90100 baa086  mov ah,0x86; mov cx,1; mov dx,0x86a0
///  7c21 cd15                int 0x15                 (wait 0x186a0 µs)
///  7c23 66 8106 4c7c 80000000   add dword [lba],128
///  7c2c 66 813e 4c7c 00800100   cmp dword [lba],98304
///  7c35 72d7                jb again
///  7c37 66 c706 4c7c 00c00000   mov dword [lba],49152
///  7c40 ebcc                jmp again
///  7c42 00 90               drive, pad
///  7c44 10 00 0100 0080 0000    DAP: size 16, 1 sector, to 0000:8000
///  7c4c 00c00000 00000000   lba (u64)
/// ```
const READER: [u8; 84] = [
    0x31, 0xc0, 0x8e, 0xd8, 0x8e, 0xd0, 0xbc, 0x00, 0x7c, 0xfb, 0x88, 0x16, 0x42, 0x7c, 0xbe, 0x44,
    0x7c, 0xb4, 0x42, 0x8a, 0x16, 0x42, 0x7c, 0xcd, 0x13, 0xb4, 0x86, 0xb9, 0x01, 0x00, 0xba, 0xa0,
    0x86, 0xcd, 0x15, 0x66, 0x81, 0x06, 0x4c, 0x7c, 0x80, 0x00, 0x00, 0x00, 0x66, 0x81, 0x3e, 0x4c,
    0x7c, 0x00, 0x80, 0x01, 0x00, 0x72, 0xd7, 0x66, 0xc7, 0x06, 0x4c, 0x7c, 0x00, 0xc0, 0x00, 0x00,
    0xeb, 0xcc, 0x00, 0x90, 0x10, 0x00, 0x01, 0x00, 0x00, 0x80, 0x00, 0x00, 0x00, 0xc0, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00,
];

fn json(p: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .unwrap()
}

#[test]
fn an_outage_past_the_hold_mid_stream_is_waited_out_and_the_disk_streams_identical() {
    let sim = Vcsim::start();
    let name = format!("v2k-t{}-outage", std::process::id());
    let flat = vm_with_patterned_disk(&sim, &name);
    let proxy = SessionProxy::start(sim.port, Faults::default());
    let (t, run) = scratch();
    let _domain = Domain(name.clone());
    let mut child = start_live(&proxy, &name, t.path(), &["--live-outage-limit", "300"]);

    // A third of the way in, the datastore goes away for four times the hold: the
    // read in flight fails past the hold, and so does the pull.
    wait_for_pull(&mut child, t.path(), &name, 0.3);
    let outage = Duration::from_secs(4 * HOLD);
    let down_at = Instant::now();
    go_down(&proxy.st, Some(outage));
    // When v2k said it waited for the source (live.json `outage`) and when it went
    // back to streaming: how long it took to resume once the datastore was back.
    let (mut waiting, mut resumed) = (None, None);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        match live_state(&run).as_str() {
            "outage" if waiting.is_none() => waiting = Some(down_at.elapsed()),
            "streaming" if waiting.is_some() && resumed.is_none() => {
                resumed = Some(down_at.elapsed())
            }
            _ => {}
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let total = down_at.elapsed();
    eprintln!(
        "datastore down for {:.1} s; v2k waiting from {:.1} s, streaming again at {:.1} s ({:.1} s after the datastore was back)",
        outage.as_secs_f64(),
        waiting.unwrap_or_default().as_secs_f64(),
        resumed.unwrap_or_default().as_secs_f64(),
        resumed.unwrap_or_default().saturating_sub(outage).as_secs_f64()
    );
    assert!(
        waiting.is_some() && resumed.is_some(),
        "live.json never said `outage` then `streaming`"
    );
    let stderr = std::fs::read_to_string(t.path().join("stderr")).unwrap();
    assert_eq!(status.code(), Some(0), "{}", log(t.path()));
    // The figures, for docs/live-import.md (printed, not asserted).
    eprintln!(
        "outage {:.1} s; v2k ended {:.1} s after it began; v2k said:\n{}",
        outage.as_secs_f64(),
        total.as_secs_f64(),
        stderr
            .lines()
            .filter(|l| l.contains("answer") || l.contains("restarted") || l.contains("again"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    let r = json(&run.join("report.json"));
    let live = &r["live"];
    eprintln!("live: {live:#}");
    assert_eq!(live["verdict"], "verified", "{live:#}");
    assert!(live["outages"].as_u64().unwrap() >= 1, "{live:#}");
    assert!(live["pull-restarts"].as_u64().unwrap() >= 1, "{live:#}");
    assert!(live["outage-seconds"].as_f64().unwrap() > 0.0, "{live:#}");
    assert_eq!(live["mismatched"], 0, "{live:#}");
    let disk = &live["disks"][0];
    assert!(disk["pull-restarts"].as_u64().unwrap() >= 1, "{disk:#}");
    assert!(disk["retries"].as_u64().unwrap() >= 1, "{disk:#}");
    // The pull started again copied only what the overlay lacked: had it started
    // over, a third of the disk or more would have been served twice. (SeaBIOS's
    // boot-sector reads and the read that failed add a few clusters at most.)
    let served = disk["bytes-served"].as_u64().unwrap();
    assert!(
        served <= DISK as u64 + (1 << 20),
        "{served} bytes served for a {DISK}-byte disk: the restarted pull read again"
    );
    assert_eq!(json(&run.join("live.json"))["state"], "done");
    assert_eq!(power_state(&sim.client(), &name), "poweredOff");
    // Every served cluster's hash was journaled as it was served (it survives a kill).
    let journal = v2k_live::Journal::load(&run.join("live/disk0.hashes")).unwrap();
    assert_eq!(
        journal.hashes.len() as u64,
        disk["served"].as_u64().unwrap()
    );

    // The overlay, standalone, holds exactly the source's bytes.
    let _ = virsh(&["destroy", &name]);
    let ov = PathBuf::from(disk["overlay"].as_str().unwrap());
    let o = Command::new("qemu-img")
        .args(["compare", "-f", "qcow2", "-F", "raw"])
        .arg(&ov)
        .arg(&flat)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "qemu-img compare: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let info = Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(&ov)
        .output()
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert!(info.get("backing-filename").is_none(), "{info:#}");
}

#[test]
fn an_outage_past_the_limit_fails_clearly_stops_the_domain_and_leaves_the_source_off() {
    let sim = Vcsim::start();
    let name = format!("v2k-t{}-limit", std::process::id());
    vm_with_patterned_disk(&sim, &name);
    let proxy = SessionProxy::start(sim.port, Faults::default());
    let (t, run) = scratch();
    let _domain = Domain(name.clone());
    let mut child = start_live(&proxy, &name, t.path(), &["--live-outage-limit", "5"]);
    wait_for_pull(&mut child, t.path(), &name, 0.2);
    // For good: the hold runs out, the pull fails, the wait runs out.
    go_down(&proxy.st, None);
    let status = child.wait().unwrap();
    let stderr = std::fs::read_to_string(t.path().join("stderr")).unwrap();
    assert_eq!(status.code(), Some(2), "{}", log(t.path()));
    assert!(
        stderr.contains("did not answer for") && stderr.contains("--live-outage-limit"),
        "{stderr}"
    );
    assert!(stderr.contains(&format!("{name}-flat.vmdk")), "{stderr}");
    let rec = json(&run.join("live.json"));
    assert_eq!(rec["state"], "failed", "{rec:#}");
    assert_eq!(rec["depends-on-source"], false, "{rec:#}");
    assert!(
        rec["error"].as_str().unwrap().contains("outage limit"),
        "{rec:#}"
    );
    let state = virsh(&["domstate", &name]);
    assert_eq!(
        String::from_utf8_lossy(&state.stdout).trim(),
        "shut off",
        "the domain cannot run without the source's server"
    );
    assert_eq!(power_state(&sim.client(), &name), "poweredOff");
}

#[test]
fn rollback_during_the_stream_stops_the_target_before_it_powers_the_source_on() {
    let sim = Vcsim::start();
    let name = format!("v2k-t{}-rollback", std::process::id());
    vm_with_patterned_disk(&sim, &name);
    let proxy = SessionProxy::start(sim.port, Faults::default());
    let (t, run) = scratch();
    let _domain = Domain(name.clone());
    let mut child = start_live(&proxy, &name, t.path(), &[]);
    wait_for_pull(&mut child, t.path(), &name, 0.1);
    assert_eq!(power_state(&sim.client(), &name), "poweredOff");

    let o = rollback(&run);
    let rb_err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{rb_err}\n{}", log(t.path()));
    let steps = json(&run.join("rollback.json"))["steps"].clone();
    let names: Vec<&str> = steps
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "stop-target",
            "undefine-target",
            "keep-overlays",
            "power-on-source"
        ],
        "{steps:#}"
    );
    assert!(
        steps[0]["outcome"].as_str().unwrap().starts_with("stopped"),
        "{steps:#}"
    );
    assert!(
        steps[3]["outcome"]
            .as_str()
            .unwrap()
            .ends_with("powered on"),
        "{steps:#}"
    );
    assert_eq!(power_state(&sim.client(), &name), "poweredOn");
    assert!(
        !virsh(&["dominfo", &name]).status.success(),
        "the target is undefined"
    );

    // The import, still streaming when its domain went, fails and says so.
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(2), "{}", log(t.path()));
    let rec = json(&run.join("live.json"));
    assert_eq!(rec["depends-on-source"], false, "{rec:#}");
    assert!(
        ["failed", "rolled-back"].contains(&rec["state"].as_str().unwrap()),
        "{rec:#}"
    );
    // What was served before the import stopped is in its journal.
    let journal = v2k_live::Journal::load(&run.join("live/disk0.hashes")).unwrap();
    assert!(!journal.hashes.is_empty(), "nothing journaled");
    assert!(journal.hashes.len() as u64 <= journal.clusters());
    // A second rollback converges: nothing left to stop, the source already on.
    let o = rollback(&run);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let steps = json(&run.join("rollback.json"))["steps"].clone();
    assert_eq!(steps[0]["outcome"], "absent", "{steps:#}");
    assert!(
        steps[3]["outcome"]
            .as_str()
            .unwrap()
            .ends_with("already powered on"),
        "{steps:#}"
    );
}

#[test]
fn a_guest_paused_by_an_outage_is_resumed_when_the_datastore_is_back() {
    let sim = Vcsim::start();
    let name = format!("v2k-t{}-pause", std::process::id());
    // 48 MiB: the boot sector reads the second half (larger than the server's 16 MiB
    // cluster cache, so its reads reach the datastore) while the pull, at 2 MiB/s,
    // is still in the first.
    let mut data = pattern(48 << 20, 31);
    data[..READER.len()].copy_from_slice(&READER);
    data[510..512].copy_from_slice(&[0x55, 0xaa]);
    let flat = vm_with_disk(&sim, &name, &data);
    let proxy = SessionProxy::start(sim.port, Faults::default());
    let (t, run) = scratch();
    let _domain = Domain(name.clone());
    let mut child = start_live(
        &proxy,
        &name,
        t.path(),
        &["--live-bandwidth", "2", "--live-outage-limit", "300"],
    );
    wait_for_pull(&mut child, t.path(), &name, 0.2);
    go_down(&proxy.st, Some(Duration::from_secs(4 * HOLD)));
    // The guest's read outlasts the hold: the domain pauses (rerror=stop).
    let mut paused = false;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        let o = virsh(&["domstate", "--reason", &name]);
        paused |= String::from_utf8_lossy(&o.stdout).contains("I/O error");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(status.code(), Some(0), "{}", log(t.path()));
    let live = json(&run.join("report.json"))["live"].clone();
    let stderr = std::fs::read_to_string(t.path().join("stderr")).unwrap();
    eprintln!(
        "v2k said:\n{}\nlive: {live:#}",
        stderr
            .lines()
            .filter(|l| l.contains("answer") || l.contains("I/O error"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(paused, "the domain never paused on an I/O error");
    assert!(live["resumes"].as_u64().unwrap() >= 1, "{live:#}");
    assert!(live["outages"].as_u64().unwrap() >= 1, "{live:#}");
    assert_eq!(live["verdict"], "verified", "{live:#}");
    let _ = virsh(&["destroy", &name]);
    assert_streamed_identical(&live, &flat);
}

#[test]
fn a_killed_import_resumes_on_rerun_from_where_the_stream_stood() {
    let sim = Vcsim::start();
    let name = format!("v2k-t{}-rerun", std::process::id());
    let flat = vm_with_patterned_disk(&sim, &name);
    let proxy = SessionProxy::start(sim.port, Faults::default());
    let (t, run) = scratch();
    let _domain = Domain(name.clone());
    let mut child = start_live(&proxy, &name, t.path(), &[]);
    wait_for_pull(&mut child, t.path(), &name, 0.4);
    // SIGKILL: the server goes with v2k; the domain keeps running in libvirt.
    child.kill().unwrap();
    child.wait().unwrap();
    let journal = run.join("live/disk0.hashes");
    let before = v2k_live::Journal::load(&journal).unwrap().hashes.len() as u64;
    assert!(before > 0, "nothing journaled before the kill");
    assert_eq!(json(&run.join("live.json"))["state"], "streaming");

    let status = start_live(&proxy, &name, t.path(), &[]).wait().unwrap();
    let stderr = std::fs::read_to_string(t.path().join("stderr")).unwrap();
    assert_eq!(status.code(), Some(0), "{}", log(t.path()));
    assert!(stderr.contains("resuming the live import"), "{stderr}");
    let live = json(&run.join("report.json"))["live"].clone();
    eprintln!("journaled before the kill: {before} clusters; live: {live:#}");
    assert_eq!(live["verdict"], "verified", "{live:#}");
    assert_eq!(live["mismatched"], 0, "{live:#}");
    // The check covers both runs: the killed run's journal merged with the rerun's,
    // every cluster of the disk (each is journaled before its read is answered, so the
    // kill lost none), all verified.
    let served = live["served"].as_u64().unwrap();
    assert!(served >= before, "{live:#}");
    assert_eq!(served, (DISK / (64 << 10)) as u64, "{live:#}");
    assert_eq!(live["verified"].as_u64().unwrap(), served, "{live:#}");
    // The rerun served only what the overlay still lacked.
    let again = live["disks"][0]["bytes-served"].as_u64().unwrap();
    assert!(
        again < DISK as u64 * 8 / 10,
        "the rerun served {again} bytes of a {DISK}-byte disk"
    );
    assert_eq!(json(&run.join("live.json"))["state"], "done");
    assert_eq!(power_state(&sim.client(), &name), "poweredOff");
    let _ = virsh(&["destroy", &name]);
    assert_streamed_identical(&live, &flat);
}

/// The streamed overlay of the run's one disk holds the source's flat extent's bytes
/// (`qemu-img compare`: QEMU's reading, not v2k's).
fn assert_streamed_identical(live: &serde_json::Value, flat: &Path) {
    let ov = live["disks"][0]["overlay"].as_str().unwrap();
    let o = Command::new("qemu-img")
        .args(["compare", "-f", "qcow2", "-F", "raw", ov])
        .arg(flat)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "qemu-img compare: {}",
        String::from_utf8_lossy(&o.stdout)
    );
}

/// `v2k rollback RUN` with the simulator's CA and password.
fn rollback(run: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_v2k"))
        .arg("rollback")
        .arg(run)
        .arg("--ca-file")
        .arg(&pki().ca)
        .env("V2K_VSPHERE_PASSWORD", PASSWORD)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}
