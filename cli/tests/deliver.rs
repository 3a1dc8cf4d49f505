//! End-to-end tests of `v2k migrate --to URI --pool NAME` with the real binary and the
//! real libvirt of this machine (`qemu:///system`): each test makes its own `dir`
//! storage pool under its temp directory and a VM named with its own id, and removes
//! both at the end. No guest boots (`--no-inject --no-validate`): what is checked is
//! the destination — the volumes' bytes, the domain's definition, what a rerun
//! uploads again, and the refusal of a name that is not ours.

#[path = "support/libvirt.rs"]
mod libvirt;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use libvirt::{virsh, virsh_ok, URI};
use serde_json::Value;

const V2K: &str = env!("CARGO_BIN_EXE_v2k");

/// A transient `dir` pool and a VM name, both carrying the test's id; the domain and
/// the pool are removed on drop (the volumes' files go with the temp directory).
struct Dest {
    dir: tempfile::TempDir,
    pool: String,
    name: String,
}

impl Dest {
    fn new(test: &str) -> Dest {
        let dir = tempfile::tempdir().unwrap();
        let id = format!("v2k-t{}-{test}", std::process::id());
        let pool_dir = dir.path().join("pool");
        std::fs::create_dir(&pool_dir).unwrap();
        let pool = format!("{id}-pool");
        virsh_ok(&[
            "pool-create-as",
            &pool,
            "dir",
            "--target",
            &pool_dir.to_string_lossy(),
        ]);
        Dest {
            dir,
            pool,
            name: id,
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn pool_dir(&self) -> PathBuf {
        self.dir.path().join("pool")
    }

    /// A data VM (EFI, one 8 MiB disk with 1 MiB of a pattern) named after the test.
    fn vmx(&self) -> PathBuf {
        let disk = self.path().join("data.vmdk");
        let ok = Command::new("qemu-img")
            .args(["create", "-q", "-f", "vmdk"])
            .arg(&disk)
            .arg("8M")
            .status()
            .expect("qemu-img (scripts/setup.sh)");
        assert!(ok.success());
        let ok = Command::new("qemu-io")
            .args(["-f", "vmdk", "-c", "write -P 0x5a 1M 1M"])
            .arg(&disk)
            .output()
            .expect("qemu-io (scripts/setup.sh: qemu-utils)");
        assert!(ok.status.success());
        let vmx = self.path().join("data.vmx");
        std::fs::write(
            &vmx,
            format!(
                "displayName = \"{}\"\nguestOS = \"debian12-64\"\nfirmware = \"efi\"\n\
                 numvcpus = \"1\"\nmemSize = \"512\"\nscsi0.present = \"TRUE\"\n\
                 scsi0.virtualDev = \"pvscsi\"\nscsi0:0.present = \"TRUE\"\n\
                 scsi0:0.fileName = \"data.vmdk\"\nethernet0.present = \"TRUE\"\n\
                 ethernet0.addressType = \"static\"\nethernet0.address = \"00:50:56:00:00:2b\"\n",
                self.name
            ),
        )
        .unwrap();
        vmx
    }

    fn migrate(&self, vmx: &Path, out: &Path) -> Output {
        self.migrate_to(URI, vmx, out)
    }

    fn migrate_to(&self, uri: &str, vmx: &Path, out: &Path) -> Output {
        Command::new(V2K)
            .arg("migrate")
            .arg(vmx)
            .arg("--out")
            .arg(out)
            .args(["--no-inject", "--no-validate", "--to", uri, "--pool"])
            .arg(&self.pool)
            .output()
            .unwrap()
    }

    fn volumes(&self) -> Vec<String> {
        let mut v: Vec<String> = virsh_ok(&["vol-list", "--pool", &self.pool])
            .lines()
            .filter_map(|l| l.split_whitespace().next().map(String::from))
            .collect();
        v.sort();
        v
    }
}

impl Drop for Dest {
    fn drop(&mut self) {
        let _ = virsh(&["destroy", &self.name]);
        let _ = virsh(&["undefine", &self.name, "--keep-nvram"]);
        let _ = virsh(&["pool-destroy", &self.pool]);
    }
}

fn report(out: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap()
}

fn actions(r: &Value) -> Vec<(String, String)> {
    r["delivery"]["volumes"]
        .as_array()
        .unwrap_or_else(|| panic!("no delivery in the report: {r:#}"))
        .iter()
        .map(|v| {
            (
                v["name"].as_str().unwrap().to_string(),
                v["action"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn ok(o: &Output) {
    assert_eq!(
        o.status.code(),
        Some(0),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The disks and the EFI variable store land in the pool byte for byte, the domain is
/// defined (persistent, not started) on the pool's paths; a rerun uploads nothing, and
/// after a volume went missing or was cut short only that one is uploaded again.
#[test]
fn migrate_to_a_pool_uploads_the_disks_and_defines_the_domain_on_them() {
    let d = Dest::new("deliver");
    let vmx = d.vmx();
    let out = d.path().join("run");
    let o = d.migrate(&vmx, &out);
    ok(&o);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("deliver: started"), "{stderr}");
    assert!(stderr.contains("uploaded"), "progress on stderr: {stderr}");
    assert!(
        stderr.contains("upload 0: 100%"),
        "progress on stderr: {stderr}"
    );
    assert!(
        stderr.contains("upload 1: 100%"),
        "the variable store: {stderr}"
    );

    let disk_vol = format!("{}-scsi0-0.qcow2", d.name);
    let vars_vol = format!("{}_VARS.fd", d.name);
    let mut want = vec![disk_vol.clone(), vars_vol.clone()];
    want.sort();
    assert_eq!(d.volumes(), want);
    // Byte for byte what the run directory holds.
    assert_eq!(
        std::fs::read(d.pool_dir().join(&disk_vol)).unwrap(),
        std::fs::read(out.join("disks/scsi0-0.qcow2")).unwrap()
    );
    assert_eq!(
        std::fs::read(d.pool_dir().join(&vars_vol)).unwrap(),
        std::fs::read(out.join(format!("{}_VARS.fd", d.name))).unwrap()
    );
    // Defined persistently, not running, on the pool's paths and nothing of the run
    // directory.
    let info = virsh_ok(&["dominfo", &d.name]);
    assert!(
        info.lines()
            .any(|l| l.starts_with("State:") && l.contains("shut off")),
        "{info}"
    );
    assert!(
        info.lines()
            .any(|l| l.starts_with("Persistent:") && l.contains("yes")),
        "{info}"
    );
    let xml = virsh_ok(&["dumpxml", "--inactive", &d.name]);
    let pool_dir = d.pool_dir();
    assert!(
        xml.contains(&format!("file='{}'", pool_dir.join(&disk_vol).display())),
        "{xml}"
    );
    assert!(
        xml.contains(&format!("{}</nvram>", pool_dir.join(&vars_vol).display())),
        "{xml}"
    );
    assert!(!xml.contains(&*out.to_string_lossy()), "{xml}");

    let r = report(&out);
    assert_eq!(r["delivery"]["domain"], d.name.as_str());
    assert_eq!(r["delivery"]["pool"], d.pool.as_str());
    assert!(
        actions(&r).iter().all(|(_, a)| a == "uploaded"),
        "{:?}",
        actions(&r)
    );
    assert!(
        r["stages"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"] == "deliver" && s["status"] == "done"),
        "{r:#}"
    );
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.contains("<h2>Delivered</h2>"), "{html}");

    // A rerun: everything is there with the same content hash.
    let o = d.migrate(&vmx, &out);
    ok(&o);
    let r = report(&out);
    assert!(
        actions(&r).iter().all(|(_, a)| a == "kept"),
        "{:?}",
        actions(&r)
    );

    // The disk volume lost, the variable store cut short (as a killed upload leaves
    // it): those are uploaded again, under the same names, and nothing else.
    virsh_ok(&["vol-delete", "--pool", &d.pool, &disk_vol]);
    let vars_path = d.pool_dir().join(&vars_vol);
    std::fs::write(&vars_path, b"cut").unwrap();
    virsh_ok(&["pool-refresh", &d.pool]);
    let o = d.migrate(&vmx, &out);
    ok(&o);
    let r = report(&out);
    assert!(
        actions(&r).iter().all(|(_, a)| a == "uploaded"),
        "{:?}",
        actions(&r)
    );
    assert_eq!(d.volumes(), want);
    assert_eq!(
        std::fs::read(&vars_path).unwrap(),
        std::fs::read(out.join(format!("{}_VARS.fd", d.name))).unwrap()
    );
}

/// A domain, or a volume, of the same name that this run directory did not create is
/// refused before anything is uploaded: the foreign objects are left as they were.
#[test]
fn a_name_clash_on_the_destination_is_refused_before_anything_is_uploaded() {
    let d = Dest::new("clash");
    let vmx = d.vmx();

    // A foreign domain of the VM's name.
    let foreign = d.path().join("foreign.xml");
    std::fs::write(
        &foreign,
        format!(
            "<domain type='qemu'><name>{}</name><memory unit='MiB'>64</memory>\
             <os><type arch='x86_64'>hvm</type></os></domain>",
            d.name
        ),
    )
    .unwrap();
    virsh_ok(&["define", &foreign.to_string_lossy()]);
    let out = d.path().join("run");
    let o = d.migrate(&vmx, &out);
    assert_eq!(o.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains(&format!("a domain named \"{}\" already exists", d.name)),
        "{stderr}"
    );
    assert!(d.volumes().is_empty(), "{:?}", d.volumes());
    let xml = virsh_ok(&["dumpxml", "--inactive", &d.name]);
    assert!(
        !xml.contains("<disk"),
        "the foreign domain is untouched: {xml}"
    );
    virsh_ok(&["undefine", &d.name]);

    // A foreign volume of the disk's name, in a fresh run directory.
    let disk_vol = format!("{}-scsi0-0.qcow2", d.name);
    virsh_ok(&[
        "vol-create-as",
        &d.pool,
        &disk_vol,
        "4096",
        "--format",
        "raw",
    ]);
    let out = d.path().join("run2");
    let o = d.migrate(&vmx, &out);
    assert_eq!(o.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains(&format!("a volume named \"{disk_vol}\" already exists")),
        "{stderr}"
    );
    assert_eq!(d.volumes(), vec![disk_vol.clone()]);
    assert_eq!(
        std::fs::metadata(d.pool_dir().join(&disk_vol))
            .unwrap()
            .len(),
        4096
    );
    assert!(
        !virsh(&["dominfo", &d.name]).status.success(),
        "no domain was defined"
    );
}

fn rollback(run: &Path, extra: &[&str]) -> Output {
    Command::new(V2K)
        .arg("rollback")
        .arg(run)
        .args(extra)
        .output()
        .unwrap()
}

fn steps(run: &Path) -> Vec<(String, String)> {
    let r: Value =
        serde_json::from_slice(&std::fs::read(run.join("rollback.json")).unwrap()).unwrap();
    r["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_string(),
                s["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Rollback stops (a paused domain: no guest code runs) and undefines the delivered
/// domain, keeps its volumes, and records every step in rollback.json and the
/// report; run again — as after a kill at any step — it finds nothing left to do and
/// says so; `--delete-volumes` then removes only the delivery's volumes.
#[test]
fn rollback_stops_and_undefines_the_target_keeps_volumes_and_converges_on_rerun() {
    let d = Dest::new("rollback");
    let vmx = d.vmx();
    let out = d.path().join("run");
    ok(&d.migrate(&vmx, &out));
    virsh_ok(&["start", "--paused", &d.name]);
    // A volume of someone else's in the same pool is never touched.
    virsh_ok(&[
        "vol-create-as",
        &d.pool,
        "other.raw",
        "4096",
        "--format",
        "raw",
    ]);

    let o = rollback(&out, &[]);
    ok(&o);
    assert!(
        !virsh(&["dominfo", &d.name]).status.success(),
        "the domain is gone"
    );
    let mut want = vec![
        format!("{}-scsi0-0.qcow2", d.name),
        format!("{}_VARS.fd", d.name),
        "other.raw".to_string(),
    ];
    want.sort();
    assert_eq!(d.volumes(), want, "volumes kept");
    let s = steps(&out);
    let names: Vec<&str> = s.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "stop-target",
            "undefine-target",
            "keep-volumes",
            "power-on-source"
        ]
    );
    assert_eq!(s[0].1, "stopped (was paused)");
    assert!(s[1].1.contains("undefined"), "{s:?}");
    assert!(s[2].1.starts_with("2 volume(s) kept"), "{s:?}");
    assert!(s[3].1.contains("local source"), "{s:?}");
    let r = report(&out);
    assert_eq!(r["rollback"]["steps"][0]["name"], "stop-target");
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.contains("<h2>Rolled back</h2>"));

    // Again: nothing left to stop or undefine.
    ok(&rollback(&out, &[]));
    let s = steps(&out);
    assert_eq!(s[0].1, "absent");
    assert_eq!(s[1].1, "absent");

    ok(&rollback(&out, &["--delete-volumes"]));
    assert_eq!(d.volumes(), vec!["other.raw".to_string()]);
    assert!(steps(&out)[2].1.starts_with("2 volume(s) deleted"));

    // Delivered again after the rollback: the same names, uploaded anew.
    ok(&d.migrate(&vmx, &out));
    assert!(virsh(&["dominfo", &d.name]).status.success());
}

/// A domain defined by someone else under the delivered name (same name, another
/// UUID) is refused by rollback and left running as it was.
#[test]
fn rollback_refuses_a_domain_it_did_not_define() {
    let d = Dest::new("rbforeign");
    let vmx = d.vmx();
    let out = d.path().join("run");
    ok(&d.migrate(&vmx, &out));
    virsh_ok(&["undefine", &d.name, "--keep-nvram"]);
    let foreign = d.path().join("foreign.xml");
    std::fs::write(
        &foreign,
        format!(
            "<domain type='qemu'><name>{}</name><memory unit='MiB'>64</memory>\
             <os><type arch='x86_64'>hvm</type></os></domain>",
            d.name
        ),
    )
    .unwrap();
    virsh_ok(&["define", &foreign.to_string_lossy()]);
    let o = rollback(&out, &[]);
    assert_eq!(o.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("refusing to touch it"), "{stderr}");
    assert!(virsh(&["dominfo", &d.name]).status.success());
    assert!(!out.join("rollback.json").exists());
}

/// Without a delivery there is nothing to roll back: a clear error, exit 2.
#[test]
fn rollback_of_a_run_without_delivery_says_so() {
    let t = tempfile::tempdir().unwrap();
    let o = rollback(t.path(), &[]);
    assert_eq!(o.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("nothing was delivered"), "{stderr}");
}

/// A `virsh` in front of the real one that SIGKILLs v2k (its parent) when called
/// with `step` as its subcommand: a kill -9 at exactly that step.
fn killer_path(dir: &Path, step: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    let bin = dir.join(format!("bin-{step}"));
    std::fs::create_dir_all(&bin).unwrap();
    let real = String::from_utf8(
        Command::new("sh")
            .args(["-c", "command -v virsh"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let script = bin.join("virsh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nfor a in \"$@\"; do [ \"$a\" = {step} ] && kill -9 $PPID && exit 1; done\nexec {} \"$@\"\n",
            real.trim()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    format!("{}:{}", bin.display(), std::env::var("PATH").unwrap())
}

/// kill -9 at every libvirt step of a delivery (volume created but not uploaded,
/// before the define, after the define before its UUID is recorded) and of a
/// rollback (before the stop, the undefine, the volume deletion); each time the
/// plain rerun converges: one domain, one volume per name, the same bytes; then
/// nothing left behind.
#[test]
fn kill_9_at_every_step_of_delivery_and_rollback_then_a_rerun_converges() {
    let d = Dest::new("kill9");
    let vmx = d.vmx();
    let out = d.path().join("run");
    let disk_vol = format!("{}-scsi0-0.qcow2", d.name);
    let vars_vol = format!("{}_VARS.fd", d.name);
    let mut want = vec![disk_vol.clone(), vars_vol.clone()];
    want.sort();
    for step in ["vol-upload", "define", "domuuid"] {
        let o = Command::new(V2K)
            .env("PATH", killer_path(d.path(), step))
            .arg("migrate")
            .arg(&vmx)
            .arg("--out")
            .arg(&out)
            .args(["--no-inject", "--no-validate", "--to", URI, "--pool"])
            .arg(&d.pool)
            .output()
            .unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(o.status.signal(), Some(9), "killed at {step}");
        ok(&d.migrate(&vmx, &out));
        assert_eq!(d.volumes(), want, "after a kill at {step}");
        assert_eq!(
            std::fs::read(d.pool_dir().join(&disk_vol)).unwrap(),
            std::fs::read(out.join("disks/scsi0-0.qcow2")).unwrap(),
            "after a kill at {step}"
        );
        assert_eq!(
            virsh_ok(&["list", "--all", "--name"])
                .lines()
                .filter(|l| l.trim() == d.name)
                .count(),
            1
        );
    }
    for step in ["destroy", "undefine", "vol-delete"] {
        virsh_ok(&["start", "--paused", &d.name]);
        let o = Command::new(V2K)
            .env("PATH", killer_path(d.path(), step))
            .arg("rollback")
            .arg(&out)
            .arg("--delete-volumes")
            .output()
            .unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(o.status.signal(), Some(9), "killed at {step}");
        ok(&rollback(&out, &["--delete-volumes"]));
        assert!(!virsh(&["dominfo", &d.name]).status.success(), "{step}");
        assert!(d.volumes().is_empty(), "after a kill at {step}");
        // Delivered again for the next step.
        ok(&d.migrate(&vmx, &out));
    }
}

/// An sshd of the test's own on a loopback port: its host key, and a client key it
/// accepts for root, generated under `dir`; stopped by PID on drop.
struct Sshd {
    child: std::process::Child,
    /// `qemu+ssh://root@127.0.0.1:PORT/system?command=WRAPPER`: the wrapper runs ssh
    /// with the test's key and a known-hosts file in the temp dir (nothing in ~/.ssh).
    uri: String,
}

impl Sshd {
    fn start(dir: &Path) -> Sshd {
        use std::os::unix::fs::PermissionsExt;
        let sshd = Path::new("/usr/sbin/sshd");
        assert!(
            sshd.exists(),
            "missing prerequisite: /usr/sbin/sshd (scripts/setup.sh: openssh-server)"
        );
        let d = dir.join("ssh");
        std::fs::create_dir_all(&d).unwrap();
        for k in ["host", "client"] {
            let o = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(d.join(k))
                .output()
                .expect("ssh-keygen (openssh-client)");
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        }
        std::fs::copy(d.join("client.pub"), d.join("authorized_keys")).unwrap();
        // sshd's privilege separation directory (created by its service normally).
        std::fs::create_dir_all("/run/sshd").unwrap();
        // A free loopback port: bound, read, released just before sshd takes it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cfg = d.join("sshd_config");
        std::fs::write(
            &cfg,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nAuthorizedKeysFile {}\n\
                 PermitRootLogin prohibit-password\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nPidFile none\n",
                d.join("host").display(),
                d.join("authorized_keys").display()
            ),
        )
        .unwrap();
        let child = Command::new(sshd)
            .args(["-D", "-e", "-f"])
            .arg(&cfg)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let wrapper = d.join("ssh-wrapper");
        std::fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\nexec ssh -i {} -o UserKnownHostsFile={} \\\n  \
                 -o StrictHostKeyChecking=accept-new -o BatchMode=yes \"$@\"\n",
                d.join("client").display(),
                d.join("known_hosts").display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "sshd did not listen");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Sshd {
            child,
            uri: format!(
                "qemu+ssh://root@127.0.0.1:{port}/system?command={}",
                wrapper.display()
            ),
        }
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The same delivery over `qemu+ssh://` (libvirt's upload stream through an sshd the
/// test started; no shared path is used by v2k): the volumes hold the run
/// directory's bytes, the domain is defined; the rollback goes over the same URI.
#[test]
fn migrate_over_qemu_ssh_uploads_through_the_connection_and_rolls_back() {
    let d = Dest::new("ssh");
    let sshd = Sshd::start(d.path());
    let vmx = d.vmx();
    let out = d.path().join("run");
    let o = d.migrate_to(&sshd.uri, &vmx, &out);
    ok(&o);
    let disk_vol = format!("{}-scsi0-0.qcow2", d.name);
    assert_eq!(
        std::fs::read(d.pool_dir().join(&disk_vol)).unwrap(),
        std::fs::read(out.join("disks/scsi0-0.qcow2")).unwrap()
    );
    assert!(virsh(&["dominfo", &d.name]).status.success());
    let r = report(&out);
    assert_eq!(r["delivery"]["uri"], sshd.uri.as_str());
    ok(&rollback(&out, &[]));
    assert!(!virsh(&["dominfo", &d.name]).status.success());
    assert_eq!(d.volumes().len(), 2, "volumes kept");
}

/// `--start --autostart`: the delivered domain runs (its firmware on the empty data
/// disk; no guest is booted) and starts with libvirt; a rerun leaves it running and
/// refuses to upload a volume again under it; the rollback stops it.
#[test]
fn start_and_autostart_run_the_delivered_domain_and_a_rerun_never_rewrites_it() {
    let d = Dest::new("start");
    let vmx = d.vmx();
    let out = d.path().join("run");
    let migrate = || {
        Command::new(V2K)
            .arg("migrate")
            .arg(&vmx)
            .arg("--out")
            .arg(&out)
            .args(["--no-inject", "--no-validate", "--to", URI, "--pool"])
            .arg(&d.pool)
            .args(["--start", "--autostart"])
            .output()
            .unwrap()
    };
    ok(&migrate());
    assert_eq!(virsh_ok(&["domstate", &d.name]).trim(), "running");
    let info = virsh_ok(&["dominfo", &d.name]);
    assert!(
        info.lines()
            .any(|l| l.starts_with("Autostart:") && l.contains("enable")),
        "{info}"
    );
    let r = report(&out);
    assert_eq!(r["delivery"]["state"], "running");
    assert_eq!(r["delivery"]["autostart"], true);

    // Again: nothing to upload, still running (not restarted).
    ok(&migrate());
    assert_eq!(virsh_ok(&["domstate", &d.name]).trim(), "running");
    assert!(actions(&report(&out)).iter().all(|(_, a)| a == "kept"));

    // A record that no longer proves the volumes: an upload would be needed, under a
    // running domain: refused.
    let rec = out.join("delivery.json");
    let mut v: Value = serde_json::from_slice(&std::fs::read(&rec).unwrap()).unwrap();
    v["uploaded"] = Value::Array(vec![]);
    std::fs::write(&rec, serde_json::to_vec(&v).unwrap()).unwrap();
    let o = migrate();
    assert_eq!(o.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("is running and volume"), "{stderr}");

    ok(&rollback(&out, &[]));
    assert_eq!(steps(&out)[0].1, "stopped (was running)");
    assert!(!virsh(&["dominfo", &d.name]).status.success());
}

/// `d.path()/plan.yaml`: one wave, `d`'s VM from `vmx` (no injection, no validation)
/// delivered to `d`'s pool, run directory `wrun`; `top` adds top-level keys.
fn wave_plan(d: &Dest, vmx: &Path, top: &str) -> PathBuf {
    let plan = d.path().join("plan.yaml");
    std::fs::write(
        &plan,
        format!(
            "version: 1\nrun-dir: wrun\n{top}target:\n  uri: {URI}\n  pool: {}\n\
             waves:\n  - name: w\n    vms:\n      - source: {}\n        name: {}\n        \
             inject: false\n        validate: false\n",
            d.pool,
            vmx.display(),
            d.name
        ),
    )
    .unwrap();
    plan
}

/// A wave plan's `target:` delivers its VM; `v2k wave rollback PLAN --vm NAME` rolls
/// it back through the journal's run directory and journals the steps.
#[test]
fn a_wave_plan_target_delivers_and_wave_rollback_undoes_it() {
    let d = Dest::new("wave");
    let vmx = d.vmx();
    let plan = wave_plan(&d, &vmx, "");
    let o = Command::new(V2K)
        .args(["wave", "run"])
        .arg(&plan)
        .output()
        .unwrap();
    ok(&o);
    assert!(virsh(&["dominfo", &d.name]).status.success(), "delivered");
    assert_eq!(d.volumes().len(), 2);

    let o = Command::new(V2K)
        .args(["wave", "rollback"])
        .arg(&plan)
        .args(["--vm", &d.name])
        .output()
        .unwrap();
    ok(&o);
    assert!(String::from_utf8_lossy(&o.stdout).contains("rolled back"));
    assert!(!virsh(&["dominfo", &d.name]).status.success());
    assert_eq!(d.volumes().len(), 2, "volumes kept");
    let journal = std::fs::read_to_string(d.path().join("wrun/journal.jsonl")).unwrap();
    let rolled: Vec<Value> = journal
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v: &Value| v["type"] == "vm-rolled-back")
        .collect();
    assert_eq!(rolled.len(), 1, "{journal}");
    assert_eq!(rolled[0]["vm"], d.name.as_str());
    assert!(
        rolled[0]["steps"][1]
            .as_str()
            .unwrap()
            .starts_with("undefine-target: "),
        "{journal}"
    );

    // The journal with its new record still reads.
    let o = Command::new(V2K)
        .args(["wave", "status"])
        .arg(d.path().join("wrun"))
        .output()
        .unwrap();
    ok(&o);
    assert!(String::from_utf8_lossy(&o.stdout).contains("finished"));

    let o = Command::new(V2K)
        .args(["wave", "rollback"])
        .arg(&plan)
        .args(["--vm", "nope"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no VM \"nope\""));
}

/// A plan's `rollback-window:`: `wave status` shows the time left; `wave finalize`
/// (which ends the way back) is refused within it (exit 3) until the operator closes
/// it early with a reason, journalled with who; a finalized VM is not rolled back.
#[test]
fn the_rollback_window_holds_finalize_and_a_finalized_vm_is_not_rolled_back() {
    let d = Dest::new("window");
    let vmx = d.vmx();
    let plan = wave_plan(&d, &vmx, "rollback-window: 2h\n");
    let v2k = |args: &[&str]| {
        Command::new(V2K)
            .args(args)
            .arg(&plan)
            .args(["--vm", &d.name])
            .output()
            .unwrap()
    };
    ok(&Command::new(V2K)
        .args(["wave", "run"])
        .arg(&plan)
        .output()
        .unwrap());
    let status = || {
        let o = Command::new(V2K)
            .args(["wave", "status"])
            .arg(d.path().join("wrun"))
            .output()
            .unwrap();
        ok(&o);
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let s = status();
    assert!(s.contains("[rollback window: 1h 59m left]"), "{s}");

    let o = v2k(&["wave", "finalize"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(3), "{out}");
    assert!(
        out.contains("refused: rollback window: 1h 59m left"),
        "{out}"
    );

    let o = Command::new(V2K)
        .args(["wave", "finalize"])
        .arg(&plan)
        .args(["--vm", &d.name, "--close-window", "owner signed off"])
        .output()
        .unwrap();
    ok(&o);
    assert!(String::from_utf8_lossy(&o.stdout).contains("finalized early"));
    assert!(status().contains("[finalized: no rollback]"));

    let o = v2k(&["wave", "rollback"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("was finalized by"), "{out}");
    assert!(virsh(&["dominfo", &d.name]).status.success(), "kept");

    let journal = std::fs::read_to_string(d.path().join("wrun/journal.jsonl")).unwrap();
    let fin: Vec<Value> = journal
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v: &Value| v["type"] == "vm-finalized")
        .collect();
    assert_eq!(fin.len(), 1, "{journal}");
    assert_eq!(fin[0]["early-reason"], "owner signed off", "{journal}");
    assert!(fin[0]["by"].as_str().unwrap().contains("uid"), "{journal}");
    assert!(!journal.contains("vm-rolled-back"), "{journal}");
}
