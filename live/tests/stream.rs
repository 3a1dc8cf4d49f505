//! The stream stage's plumbing against real libvirt and QEMU, with no guest OS: a disk
//! with nothing bootable still starts (SeaBIOS finds no boot sector and waits), takes
//! block jobs and answers the monitor, so each test takes seconds under TCG.
//!
//! A served file, an overlay over its export, the injector's write (before the
//! bitmap), a domain from kvm-target's live XML with the socket handed to libvirt's
//! QEMU user, the guest's write (the device's own `qemu-io` in HMP: through the
//! virtio-blk backend, as a guest write), a rate-limited `blockpull` to the end, then
//! the check: verified and counted, and a changed cluster the bitmap missed caught; a
//! SIGKILLed QEMU leaves the bitmap in use and the check cannot tell; a pull that hits
//! a failing source ends in a clear error and a second pull completes; the served
//! source gone pauses the domain (rerror=stop) and it runs again once it is back.

use std::collections::BTreeSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use v2k_kvm_target::{
    dac_label, live_domain_xml, Accel, DiskBus, Firmware, GuestFeatures, NbdBacking, Target,
};
use v2k_live::overlay::{
    add_guest_bitmap, allocated_clusters, create_overlay, guest_writes, GuestWrites,
};
use v2k_live::source::ReadFuture;
use v2k_live::stream::{
    check_overlay, check_running, has_backing, resume_after_outage, start_pull, wait_pull, Verdict,
    FROZEN_BITMAP,
};
use v2k_live::{serve, FileSource, ServeOptions, ServerHandle, Source, CLUSTER};

const URI: &str = "qemu:///system";
/// 4 MiB: 64 clusters, pulled at 1 MiB/s in about four seconds, so progress is seen.
const SIZE: usize = 4 << 20;
/// The guest's write: two whole clusters at 1 MiB.
const GUEST_AT: u64 = 1 << 20;
const GUEST_LEN: u64 = 2 * CLUSTER;
/// The injector's write: 4 KiB inside cluster 1 (a partial write: QEMU reads the rest
/// of the cluster from the backing, so it is served, then changed).
const INJECT_AT: u64 = CLUSTER;

fn sh(c: &mut Command) -> String {
    let o = c.output().unwrap_or_else(|e| panic!("{c:?}: {e}"));
    assert!(
        o.status.success(),
        "{c:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn virsh(args: &[&str]) -> String {
    sh(Command::new("virsh").args(["-q", "-c", URI]).args(args))
}

/// Deterministic content with no boot signature (so SeaBIOS boots nothing).
fn pattern() -> Vec<u8> {
    let mut x = 0x9e37_79b9u32;
    let mut v: Vec<u8> = (0..SIZE)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    v[510] = 0;
    v[511] = 0;
    v
}

/// Where a [`Faulty`] source fails while it is down: the second half of the disk, clear
/// of the boot sector SeaBIOS reads.
const FAULT_AT: u64 = 2 << 20;

/// A file whose second half cannot be read while `down` is set (a datastore whose
/// reads fail past the retry policy's hold).
struct Faulty {
    file: FileSource,
    down: Arc<AtomicBool>,
}

impl Source for Faulty {
    fn size(&self) -> u64 {
        self.file.size()
    }
    fn name(&self) -> String {
        self.file.name()
    }
    fn read_at(&self, offset: u64, len: usize) -> ReadFuture<'_> {
        if self.down.load(Ordering::SeqCst) && offset + len as u64 > FAULT_AT {
            return Box::pin(async { Err(v2k_live::Error::Usage("the source is down".into())) });
        }
        self.file.read_at(offset, len)
    }
}

/// A served disk, its overlay after a simulated inject stage, and a running domain.
struct Live {
    rt: tokio::runtime::Runtime,
    dir: tempfile::TempDir,
    server: Option<ServerHandle>,
    domain: String,
    overlay: PathBuf,
    injected: BTreeSet<u64>,
    down: Arc<AtomicBool>,
}

impl Live {
    fn start(tag: &str) -> Live {
        if Command::new("pgrep")
            .arg("libvirtd")
            .output()
            .map(|o| !o.status.success())
            .unwrap_or(true)
        {
            panic!("libvirtd is not running (pgrep libvirtd || (virtlogd -d; libvirtd -d))");
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        // QEMU's user passes through (search only) to the socket and the overlay.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        let disk = dir.path().join("source.raw");
        std::fs::write(&disk, pattern()).unwrap();
        // The user libvirt runs a TCG ('qemu') domain's QEMU as.
        let label = dac_label(&virsh(&["capabilities"]), "qemu")
            .expect("libvirt states a numeric DAC base label for qemu domains");
        let sock = dir.path().join("disk0.sock");
        let down = Arc::new(AtomicBool::new(false));
        let server = rt
            .block_on(serve(
                Arc::new(Faulty {
                    file: FileSource::open(&disk).unwrap(),
                    down: down.clone(),
                }),
                &sock,
                ServeOptions {
                    export: "disk".into(),
                    owner: Some((label.uid, label.gid)),
                },
            ))
            .unwrap();
        let m = std::fs::metadata(&sock).unwrap();
        assert_eq!(
            (m.mode() & 0o777, m.uid(), m.gid()),
            (0o600, label.uid, label.gid),
            "the socket is QEMU's user's alone"
        );
        let overlay = dir.path().join("disk0.qcow2");
        create_overlay(&overlay, &sock, "disk").unwrap();
        assert!(
            create_overlay(&overlay, &sock, "disk").is_err(),
            "an overlay is never replaced"
        );
        // The inject stage: a partial write into cluster 1.
        sh(Command::new("qemu-io")
            .args(["-f", "qcow2", "-c"])
            .arg(format!("write -P 0xab {INJECT_AT} 4096"))
            .arg(&overlay));
        let injected = allocated_clusters(&overlay).unwrap();
        assert_eq!(injected, BTreeSet::from([INJECT_AT / CLUSTER]));
        add_guest_bitmap(&overlay).unwrap();

        let domain = format!("v2k-live2-{tag}-{}", std::process::id());
        let t = Target {
            name: domain.clone(),
            uuid: None,
            memory_mib: 128,
            vcpus: 1,
            sockets: 1,
            cores: 1,
            firmware: Firmware::Bios,
            machine: "q35".into(),
            accel: Accel::Tcg,
            disk_bus: DiskBus::VirtioBlk,
            disks: vec![overlay.clone()],
            disk_uuids: Vec::new(),
            nics: Vec::new(),
            tuning: Default::default(),
        };
        let xml = live_domain_xml(
            &t,
            &GuestFeatures::default(),
            &[NbdBacking {
                socket: sock.clone(),
                export: "disk".into(),
            }],
        )
        .unwrap();
        let xml_path = dir.path().join("domain.xml");
        std::fs::write(&xml_path, xml).unwrap();
        // Transient: nothing is left defined if the test dies.
        virsh(&["create", xml_path.to_str().unwrap()]);
        let live = Live {
            rt,
            dir,
            server: Some(server),
            domain,
            overlay,
            injected,
            down,
        };
        assert!(has_backing(URI, &live.domain, "vda").unwrap());
        live
    }

    /// A write by the guest's own device (its virtio-blk backend), as the guest's
    /// driver would issue it.
    fn guest_write(&self) {
        self.device_write(0xcd, GUEST_AT, GUEST_LEN);
    }

    fn device_write(&self, byte: u8, at: u64, len: u64) {
        let out = virsh(&[
            "qemu-monitor-command",
            "--hmp",
            &self.domain,
            &format!(
                "qemu-io -d /machine/peripheral/virtio-disk0/virtio-backend \
                 \"write -P {byte:#x} {at} {len}\""
            ),
        ]);
        assert!(!out.contains("rror"), "{out}");
    }

    /// A fresh path in a directory QEMU's user may create its server's socket in.
    fn qemu_socket(&self, name: &str) -> PathBuf {
        let d = self.dir.path().join("qemu");
        if !d.exists() {
            std::fs::create_dir(&d).unwrap();
            let label = dac_label(&virsh(&["capabilities"]), "qemu").unwrap();
            std::os::unix::fs::chown(&d, Some(label.uid), Some(label.gid)).unwrap();
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).unwrap();
        }
        d.join(name)
    }

    /// `check_running` on the running domain, QEMU's server on a fresh `socket`.
    fn check_running(&self, record: &v2k_live::HashRecord, socket: &str) -> Verdict {
        check_running(
            URI,
            &self.domain,
            record,
            &self.overlay,
            &self.injected,
            &self.qemu_socket(socket),
        )
        .unwrap()
    }

    /// The overlay's node's bitmaps in the running QEMU: (name, recording).
    fn bitmaps(&self) -> Vec<(String, bool)> {
        let out = virsh(&[
            "qemu-monitor-command",
            &self.domain,
            r#"{"execute":"query-named-block-nodes","arguments":{"flat":true}}"#,
        ]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let node = v["return"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["drv"] == "qcow2" && n["file"] == self.overlay.to_str().unwrap())
            .expect("the overlay's node")
            .clone();
        node["dirty-bitmaps"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|b| {
                        (
                            b["name"].as_str().unwrap().to_string(),
                            b["recording"].as_bool().unwrap(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    fn qemu_pid(&self) -> u32 {
        std::fs::read_to_string(format!("/run/libvirt/qemu/{}.pid", self.domain))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    fn bitmap_socket(&self) -> PathBuf {
        self.dir.path().join("bitmap.sock")
    }

    fn record(&self) -> v2k_live::HashRecord {
        self.server.as_ref().unwrap().record()
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        let _ = Command::new("virsh")
            .args(["-q", "-c", URI, "destroy", &self.domain])
            .output();
        if let Some(s) = self.server.take() {
            self.rt.block_on(s.shutdown());
        }
    }
}

fn wait_gone(domain: &str) {
    for _ in 0..200 {
        let o = Command::new("virsh")
            .args(["-q", "-c", URI, "domstate", domain])
            .output()
            .unwrap();
        if !o.status.success() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{domain} still exists");
}

#[test]
fn a_pulled_overlay_verifies_and_counts_guest_and_v2k_writes_and_an_unmarked_change_is_caught() {
    let live = Live::start("pull");
    live.guest_write();
    start_pull(URI, &live.domain, "vda", Some(1)).unwrap();
    let mut seen = Vec::new();
    wait_pull(URI, &live.domain, "vda", Duration::from_millis(200), |p| {
        seen.push(p)
    })
    .unwrap();
    assert!(!seen.is_empty(), "a 1 MiB/s pull of 4 MiB reports progress");
    assert!(seen.iter().all(|p| p.end == SIZE as u64 && p.cur <= p.end));
    assert!(!has_backing(URI, &live.domain, "vda").unwrap());
    // A clean stop (SIGTERM): QEMU stores the bitmap.
    virsh(&["destroy", &live.domain]);
    wait_gone(&live.domain);

    let record = live.record();
    let guest: BTreeSet<u64> = (GUEST_AT / CLUSTER..(GUEST_AT + GUEST_LEN) / CLUSTER).collect();
    assert_eq!(
        guest_writes(&live.overlay, &live.bitmap_socket()).unwrap(),
        GuestWrites::Known(guest.clone()),
        "the pull marked nothing, the guest's two clusters are marked"
    );
    let Verdict::Verified(c) = check_overlay(
        &record,
        &live.overlay,
        &live.injected,
        &live.bitmap_socket(),
    )
    .unwrap() else {
        panic!("the streamed overlay does not verify");
    };
    let clusters = SIZE as u64 / CLUSTER;
    // Everything was served but the guest's whole-cluster writes (never read).
    assert_eq!(c.served, clusters - 2, "{c:?}");
    assert_eq!((c.changed_by_v2k, c.written_by_guest), (1, 2), "{c:?}");
    assert_eq!(c.verified, clusters - 3, "{c:?}");
    // The guest's and the injector's bytes are in the standalone overlay.
    let img = dir_file(&live.overlay);
    assert_eq!(img[GUEST_AT as usize], 0xcd);
    assert_eq!(img[INJECT_AT as usize], 0xab);

    // A change the bitmap did not record (bitmap disabled first) is caught.
    sh(Command::new("qemu-img")
        .args(["bitmap", "--disable"])
        .arg(&live.overlay)
        .arg(v2k_live::overlay::GUEST_BITMAP));
    sh(Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "write -P 0x77 2M 512"])
        .arg(&live.overlay));
    let Verdict::Mismatch(c) = check_overlay(
        &record,
        &live.overlay,
        &live.injected,
        &live.bitmap_socket(),
    )
    .unwrap() else {
        panic!("an unmarked change went unnoticed");
    };
    assert_eq!(c.mismatched, vec![(2 << 20) / CLUSTER]);
}

/// The check of a domain that keeps running: the same counts as the check of a stopped
/// one, the domain still running after it with its own bitmap recording and nothing of
/// the check's left; a change the bitmap did not record is caught, and a second check
/// runs (the first left QEMU's NBD server stopped).
#[test]
fn a_running_domain_is_checked_without_stopping_it() {
    let live = Live::start("running");
    live.guest_write();
    start_pull(URI, &live.domain, "vda", None).unwrap();
    wait_pull(URI, &live.domain, "vda", Duration::from_millis(100), |_| {}).unwrap();
    let record = live.record();
    let v = live.check_running(&record, "check.sock");
    let Verdict::Verified(c) = v else {
        panic!("the running overlay does not verify: {v:?}");
    };
    let clusters = SIZE as u64 / CLUSTER;
    assert_eq!(c.served, clusters - 2, "{c:?}");
    assert_eq!((c.changed_by_v2k, c.written_by_guest), (1, 2), "{c:?}");
    assert_eq!(c.verified, clusters - 3, "{c:?}");
    assert!(domstate(&live.domain).starts_with("running"));
    assert_eq!(
        live.bitmaps(),
        vec![(v2k_live::overlay::GUEST_BITMAP.to_string(), true)],
        "the guest's bitmap records on, {FROZEN_BITMAP} is gone"
    );

    // The guest's bitmap stopped, then a device write to a served cluster: caught.
    virsh(&[
        "qemu-monitor-command",
        &live.domain,
        &format!(
            r#"{{"execute":"block-dirty-bitmap-disable","arguments":{{"node":"libvirt-1-format","name":"{}"}}}}"#,
            v2k_live::overlay::GUEST_BITMAP
        ),
    ]);
    live.device_write(0x77, 2 << 20, 512);
    let v = live.check_running(&record, "check2.sock");
    let Verdict::Mismatch(c) = v else {
        panic!("an unmarked change went unnoticed: {v:?}");
    };
    assert_eq!(c.mismatched, vec![(2 << 20) / CLUSTER]);
    assert!(domstate(&live.domain).starts_with("running"));
}

/// The standalone overlay's bytes (qemu-img's reading, independent of v2k's).
fn dir_file(overlay: &Path) -> Vec<u8> {
    let raw = overlay.with_extension("raw-copy");
    sh(Command::new("qemu-img")
        .args(["convert", "-f", "qcow2", "-O", "raw"])
        .arg(overlay)
        .arg(&raw));
    std::fs::read(&raw).unwrap()
}

#[test]
fn a_killed_qemu_leaves_the_bitmap_in_use_and_the_check_cannot_tell() {
    let live = Live::start("kill");
    live.guest_write();
    let pid = live.qemu_pid();
    sh(Command::new("kill").args(["-KILL", &pid.to_string()]));
    wait_gone(&live.domain);
    assert_eq!(
        guest_writes(&live.overlay, &live.bitmap_socket()).unwrap(),
        GuestWrites::InUse
    );
    let v = check_overlay(
        &live.record(),
        &live.overlay,
        &live.injected,
        &live.bitmap_socket(),
    )
    .unwrap();
    let Verdict::CannotTell(why) = v else {
        panic!("a killed QEMU's bitmap was trusted: {v:?}");
    };
    assert!(why.contains("cannot tell what the guest wrote"), "{why}");
}

#[test]
fn a_pull_failing_on_the_source_ends_in_a_clear_error_and_a_second_pull_completes() {
    let live = Live::start("fail");
    live.guest_write();
    live.down.store(true, Ordering::SeqCst);
    start_pull(URI, &live.domain, "vda", None).unwrap();
    let err = wait_pull(URI, &live.domain, "vda", Duration::from_millis(100), |_| {}).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains(&live.domain)
            && msg.contains("vda")
            && msg.contains("still reads from its NBD backing"),
        "{msg}"
    );
    assert!(has_backing(URI, &live.domain, "vda").unwrap());
    // The source is back: the pull starts again from the overlay's state and ends.
    live.down.store(false, Ordering::SeqCst);
    start_pull(URI, &live.domain, "vda", None).unwrap();
    wait_pull(URI, &live.domain, "vda", Duration::from_millis(100), |_| {}).unwrap();
    assert!(!has_backing(URI, &live.domain, "vda").unwrap());
    virsh(&["destroy", &live.domain]);
    wait_gone(&live.domain);
    let v = check_overlay(
        &live.record(),
        &live.overlay,
        &live.injected,
        &live.bitmap_socket(),
    )
    .unwrap();
    let Verdict::Verified(c) = v else {
        panic!("{v:?}");
    };
    assert_eq!(c.written_by_guest, 2, "{c:?}");
}

fn domstate(domain: &str) -> String {
    virsh(&["domstate", "--reason", domain]).trim().to_string()
}

/// An outage of the served source (the server gone) while the guest reads unstreamed
/// data: with rerror=stop the domain pauses on the I/O error instead of passing it to
/// the guest, and resumes once the server is back on the same socket.
#[test]
fn a_source_outage_pauses_the_domain_and_it_resumes_after() {
    let mut live = Live::start("outage");
    let sock = live.server.as_ref().unwrap().socket().to_path_buf();
    let record = live.record();
    live.rt.block_on(live.server.take().unwrap().shutdown());
    // The firmware reads the boot sector again after a reset: unstreamed data.
    virsh(&["reset", &live.domain]);
    let mut state = String::new();
    for _ in 0..200 {
        state = domstate(&live.domain);
        if state.starts_with("paused") {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(state, "paused (I/O error)");
    // While the source is still away, resuming gives up with the state it saw.
    let err = resume_after_outage(URI, &live.domain, 2, Duration::from_millis(250))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("paused") && err.contains("is the source back?"),
        "{err}"
    );
    let label = dac_label(&virsh(&["capabilities"]), "qemu").unwrap();
    let disk = live.dir.path().join("source.raw");
    live.server = Some(
        live.rt
            .block_on(serve(
                Arc::new(FileSource::open(&disk).unwrap()),
                &sock,
                ServeOptions {
                    export: "disk".into(),
                    owner: Some((label.uid, label.gid)),
                },
            ))
            .unwrap(),
    );
    // QEMU's NBD client reconnects in the background after a failed request: the
    // first resume may retry before it has, and pause again; a later one runs.
    let resumes = resume_after_outage(URI, &live.domain, 20, Duration::from_millis(250)).unwrap();
    assert!(resumes >= 1);
    assert!(domstate(&live.domain).starts_with("running"));
    eprintln!("running again after {resumes} resume(s)");
    // The boot sector read again came from the new server.
    assert!(live.record().hashes.contains_key(&0) && record.hashes.contains_key(&0));
}
