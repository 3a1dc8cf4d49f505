//! Waves split over three conversion hosts with the real binary: `v2k wave assign`,
//! each host's shard run by its own `v2k wave run` in its own root directory (the
//! hosts run at once), one host killed mid-wave and excluded, its unfinished VMs
//! reassigned and run, `v2k wave report --merge` of every host's run — first with the
//! hosts as local processes (VMX sources naming their `esxi-host:`), then the same
//! through the Ansible collection over three sshd instances with VMware's simulator as
//! the source, and the simulator's inventory alone. Budget 2 disks per ESXi host;
//! disks copied and verified, no guest surgery, no boot (nothing here needs one). The
//! journals' timestamps prove the budget held across the hosts, and that every VM
//! migrated exactly once.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn v2k() -> Command {
    Command::new(env!("CARGO_BIN_EXE_v2k"))
}

fn ok(o: &std::process::Output) -> String {
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

/// `DIR/NAME/NAME.vmx` with one 8 MiB monolithicSparse disk.
fn vm(dir: &Path, name: &str) {
    let d = dir.join(name);
    std::fs::create_dir_all(&d).unwrap();
    v2k_fixtures::sparse_vmdk(&d.join("disk.vmdk"), "8M", Some((0x33, "1M", "256k")));
    std::fs::write(
        d.join(format!("{name}.vmx")),
        format!(
            "displayName = \"{name}\"\nguestOS = \"debian12-64\"\nmemSize = \"512\"\n\
             scsi0.present = \"TRUE\"\nscsi0:0.present = \"TRUE\"\nscsi0:0.fileName = \"disk.vmdk\"\n"
        ),
    )
    .unwrap();
}

fn journal(run: &Path) -> Vec<Value> {
    std::fs::read_to_string(run.join("journal.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// From the runs' journals: every VM of `esxi` (VM → its ESXi host; one disk each)
/// migrated exactly once, and no ESXi host ever had more than `budget` disks in
/// flight. A VM still open when its journal ends (its host killed in flight) counts
/// until the journal's last record.
fn assert_exactly_once_within_budget(
    runs: &[PathBuf],
    esxi: &BTreeMap<String, String>,
    budget: usize,
) {
    let mut intervals: Vec<(String, f64, f64)> = Vec::new();
    let mut migrated: BTreeMap<String, usize> = BTreeMap::new();
    for run in runs {
        let j = journal(run);
        let end = j.last().and_then(|r| r["time"].as_f64()).unwrap_or(0.0);
        let mut open: BTreeMap<String, f64> = BTreeMap::new();
        for r in &j {
            let vm = r["vm"].as_str().unwrap_or_default().to_string();
            match r["type"].as_str() {
                Some("vm-started") => {
                    open.insert(vm, r["time"].as_f64().unwrap());
                }
                Some("vm-finished") => {
                    let s = open.remove(&vm).unwrap();
                    intervals.push((vm.clone(), s, r["time"].as_f64().unwrap()));
                    if r["status"] == "migrated" {
                        *migrated.entry(vm).or_default() += 1;
                    }
                }
                _ => {}
            }
        }
        for (vm, s) in open {
            intervals.push((vm, s, end));
        }
    }
    for name in esxi.keys() {
        assert_eq!(migrated.get(name), Some(&1), "{name}: {migrated:?}");
    }
    // Only the VMs that draw on an ESXi host's budget (a local fixture draws on none).
    intervals.retain(|(vm, _, _)| esxi.contains_key(vm));
    for (vm, s, _) in &intervals {
        let host = &esxi[vm];
        let in_flight = intervals
            .iter()
            .filter(|(v, a, b)| &esxi[v] == host && a <= s && s < b)
            .count();
        assert!(
            in_flight <= budget,
            "{in_flight} disks of {host} in flight when {vm} started: {intervals:?}"
        );
    }
}

/// A host: its root directory, where its shards are copied and run.
struct Host {
    name: String,
    root: PathBuf,
}

impl Host {
    /// Copies shard `file` from the assignment into the host's root (what the
    /// playbook's distribution does) and starts `v2k wave run` on it.
    fn start(&self, shards: &Path, file: &str) -> Child {
        let dst = self.root.join(file);
        std::fs::copy(shards.join(file), &dst).unwrap();
        v2k()
            .args(["wave", "run", "--json"])
            .arg(&dst)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group: a kill takes the hook's `sleep` with it.
            .process_group(0)
            .spawn()
            .unwrap()
    }

    fn runs(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(&self.root)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "run"))
            .collect();
        v.sort();
        v
    }
}

#[test]
fn a_wave_over_three_hosts_keeps_the_esxi_budget_and_survives_a_lost_host() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    let esxi: BTreeMap<String, String> = (1..=6)
        .map(|i| (format!("vm{i}"), format!("esx{}", i % 2)))
        .collect();
    for name in esxi.keys() {
        vm(&src, name);
    }
    // The pre hook holds one VM of the host the test will kill, so the kill falls
    // inside the wave: the VM named in `hold` waits there.
    let hold = t.path().join("hold");
    let hook = t.path().join("pre.sh");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\nif [ \"$(cat {} 2>/dev/null)\" = \"$V2K_VM_NAME\" ]; then sleep 300; fi\n",
            hold.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    let plan = t.path().join("plan.yaml");
    let mut text = format!(
        "version: 1\ndefaults:\n  validate: false\n  inject: false\n  backend: qemu\n  \
         hooks:\n    pre: {{ command: [{}] }}\nlimits:\n  vms: 2\n  esxi-host-disks: 2\nwaves:\n  - name: w1\n    vms:\n",
        hook.display()
    );
    for (name, e) in &esxi {
        text.push_str(&format!(
            "      - source: src/{name}/{name}.vmx\n        esxi-host: {e}\n"
        ));
    }
    std::fs::write(&plan, text).unwrap();
    let hosts: Vec<Host> = ["conv1", "conv2", "conv3"]
        .iter()
        .map(|n| {
            let root = t.path().join("hosts").join(n);
            std::fs::create_dir_all(&root).unwrap();
            Host {
                name: n.to_string(),
                root,
            }
        })
        .collect();
    let shards = t.path().join("shards");

    // ---- assign --------------------------------------------------------------------
    let o = v2k()
        .args([
            "wave",
            "assign",
            "--hosts",
            "conv1,conv2,conv3",
            "--json",
            "-o",
        ])
        .arg(&shards)
        .arg(&plan)
        .output()
        .unwrap();
    let rec: Value = serde_json::from_str(&ok(&o)).unwrap();
    assert_eq!(rec["type"], "assignment");
    let shard_of = |rec: &Value, host: &str, generation: u64| -> Option<(String, Vec<String>)> {
        rec["shards"].as_array().unwrap().iter().find_map(|s| {
            (s["host"] == host && s["generation"] == generation).then(|| {
                (
                    s["plan"].as_str().unwrap().to_string(),
                    s["vms"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|v| v["name"].as_str().unwrap().to_string())
                        .collect(),
                )
            })
        })
    };
    // Budget 2 per ESXi host over three hosts: the shares add up to 2.
    for e in ["esx0", "esx1"] {
        let held: u64 = rec["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|h| h["shares"]["esxi-hosts"][e].as_u64())
            .sum();
        assert_eq!(held, 2, "{e}: {rec:#}");
    }
    let (lost_file, lost_vms) = shard_of(&rec, "conv3", 1).expect("conv3 got a shard");
    assert_eq!(lost_vms.len(), 2, "{rec:#}");
    // conv3 finishes its first VM and is killed while its second waits in its hook.
    std::fs::write(&hold, &lost_vms[1]).unwrap();

    // ---- run on the three hosts at once, kill conv3 mid-wave -----------------------
    let mut children = Vec::new();
    for h in &hosts {
        let (file, _) = shard_of(&rec, &h.name, 1).unwrap();
        children.push((h.name.clone(), h.start(&shards, &file)));
    }
    let lost_run = hosts[2].root.join(lost_file.replace(".yaml", ".run"));
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let j = journal(&lost_run);
        let held = j
            .iter()
            .any(|r| r["type"] == "vm-started" && r["vm"] == lost_vms[1].as_str());
        let first_done = j
            .iter()
            .any(|r| r["type"] == "vm-finished" && r["vm"] == lost_vms[0].as_str());
        if held && first_done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "conv3 never finished its first VM and started its second"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for (name, child) in &mut children {
        if name == "conv3" {
            // The whole group: v2k and the hook's sleep.
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .status();
        }
    }
    for (name, mut child) in children {
        let st = child.wait().unwrap();
        if name != "conv3" {
            assert!(st.success(), "{name}: {st}");
        }
    }
    std::fs::remove_file(&hold).unwrap();
    let before: Vec<Value> = journal(&lost_run);
    assert!(
        before
            .iter()
            .any(|r| r["type"] == "vm-finished" && r["vm"] == lost_vms[0].as_str()),
        "conv3 finished its first VM before the kill"
    );

    // ---- reassign without conv3, with every journal fetched so far -----------------
    let mut a = v2k();
    a.args([
        "wave",
        "assign",
        "--hosts",
        "conv1,conv2",
        "--exclude",
        "conv3",
        "--json",
        "-o",
    ])
    .arg(&shards)
    .arg(&plan);
    for h in &hosts {
        for r in h.runs() {
            a.arg("--journal").arg(r);
        }
    }
    let rec2: Value = serde_json::from_str(&ok(&a.output().unwrap())).unwrap();
    assert_eq!(rec2["generation"], 2);
    let moved: Vec<&str> = rec2["moved"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["vm"].as_str().unwrap())
        .collect();
    assert_eq!(
        moved,
        [lost_vms[1].as_str()],
        "only the unfinished VM moves: {rec2:#}"
    );
    let mut second = Vec::new();
    for h in &hosts[..2] {
        if let Some((file, _)) = shard_of(&rec2, &h.name, 2) {
            second.push(h.start(&shards, &file));
        }
    }
    assert_eq!(second.len(), 1);
    for mut c in second {
        assert!(c.wait().unwrap().success());
    }

    // ---- the journals: the budget held, every VM migrated exactly once -------------
    let runs: Vec<PathBuf> = hosts.iter().flat_map(Host::runs).collect();
    assert_exactly_once_within_budget(&runs, &esxi, 2);

    // ---- one merged report ---------------------------------------------------------
    let merged = t.path().join("merged");
    let mut m = v2k();
    m.args(["wave", "report", "-o"]).arg(&merged).arg("--merge");
    for h in &hosts {
        m.args(h.runs());
    }
    let o = m.output().unwrap();
    ok(&o);
    let r: Value =
        serde_json::from_slice(&std::fs::read(merged.join("w1/wave-report.json")).unwrap())
            .unwrap();
    assert_eq!(r["summary"]["total"], 6, "{r:#}");
    assert_eq!(r["summary"]["migrated"], 6, "{r:#}");
    assert!(r["conflicts"].is_null(), "{r:#}");
    for v in r["vms"].as_array().unwrap() {
        let host = v["host"].as_str().unwrap();
        let name = v["name"].as_str().unwrap();
        if name == lost_vms[1] {
            assert_ne!(host, "conv3");
            assert_eq!(v["elsewhere"][0]["host"], "conv3", "{v:#}");
        }
    }
    let html = std::fs::read_to_string(merged.join("w1/wave-report.html")).unwrap();
    assert!(
        html.contains("Merged from 3 conversion host(s): conv1, conv2, conv3."),
        "{html}"
    );
}

/// ansible-core as scripts/setup.sh installs it.
const ANSIBLE_PLAYBOOK: &str = "/opt/v2k/ansible/bin/ansible-playbook";

/// An sshd of the test's own on a loopback port (its own host key, the test's client
/// key for root); stopped by PID.
struct Sshd {
    child: Child,
    port: u16,
}

impl Sshd {
    fn start(dir: &Path, client_pub: &Path) -> Sshd {
        std::fs::create_dir_all(dir).unwrap();
        keygen(&dir.join("host"));
        std::fs::create_dir_all("/run/sshd").unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cfg = dir.join("sshd_config");
        std::fs::write(
            &cfg,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nAuthorizedKeysFile {}\n\
                 PermitRootLogin prohibit-password\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nPidFile none\n\
                 Subsystem sftp internal-sftp\n",
                dir.join("host").display(),
                client_pub.display()
            ),
        )
        .unwrap();
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("missing prerequisite: /usr/sbin/sshd (scripts/setup.sh: openssh-server)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "sshd did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Sshd { child, port }
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The host is gone: the listener and the sessions it forked (Ansible keeps its
    /// SSH connections open, so stopping the listener alone would leave them working).
    /// Only the session processes: the commands they run are left to end on their
    /// own, as a machine's would when its network goes — a shell killed mid-way can
    /// leave a lock behind in the user's home (pyenv's rehash lock did, here) that
    /// would hold up every later login on this machine.
    fn lose(&mut self) {
        let parent = self.child.id().to_string();
        let sessions: Vec<String> = std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| {
                let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
                let rest = &stat[stat.rfind(')')? + 2..];
                (rest.split(' ').nth(1)? == parent)
                    .then(|| e.file_name().to_string_lossy().into_owned())
            })
            .collect();
        self.stop();
        for pid in sessions {
            let _ = Command::new("kill").args(["-KILL", &pid]).status();
        }
    }
}

fn keygen(path: &Path) {
    let o = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .output()
        .expect("ssh-keygen (openssh-client)");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// The process whose command line has exactly `arg` among its arguments, if any (the
/// `v2k wave run` of one shard: its path is unique to this test).
fn pid_with_arg(arg: &Path) -> Option<(i32, i32)> {
    let want = arg.as_os_str().as_encoded_bytes();
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        if cmd.split(|b| *b == 0).any(|a| a == want)
            && cmd.starts_with(env!("CARGO_BIN_EXE_v2k").as_bytes())
        {
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            // pid (comm) state ppid pgrp: the fields after the last ')'.
            let rest = &stat[stat.rfind(')')? + 2..];
            let pgrp = rest.split(' ').nth(2)?.parse().ok()?;
            return Some((pid, pgrp));
        }
    }
    None
}

/// The whole path through Ansible: three conversion hosts are three sshd instances
/// on 127.0.0.1 (their own host keys, a client key made here, a root directory each),
/// the sources six VMs in VMware's simulator on two ESXi hosts (read from its
/// inventory), budget 2 disks per ESXi host, the vCenter password handed to the hosts
/// only as the playbook's `v2k_vsphere_password` (from a vars file: never on a command
/// line, never in a log or a file the runs write — asserted). `ansible/playbooks/wave.yml`
/// checks (check mode), then assigns, distributes, runs in parallel and fetches the
/// journals *while the runs go on*; one host is lost mid-wave (its sshd with its
/// sessions, and its `v2k` process group) after the controller fetched its first VM
/// finished; the playbook rerun without it moves only the unfinished VM, and a third
/// run with every host back resumes from the journals and migrates nothing again.
///
/// One boot: a second wave holds the rhel-shaped-efi fixture (its OVA), injected and
/// validated on whichever conversion host the assignment gives it. It is that layout's
/// one boot in the suite (cli/tests/migrate.rs has none of it): only a boot shows that
/// a UEFI guest whose boot entry lived in VMware's NVRAM comes up on OVMF with a fresh
/// variable store of its own, on virtio-scsi, with its static address, gateway and
/// resolver — here with the run, the verdict and the merged report coming through the
/// conversion hosts and Ansible.
#[test]
fn the_playbook_runs_a_wave_over_three_sshd_hosts_and_survives_losing_one() {
    assert!(
        Path::new(ANSIBLE_PLAYBOOK).exists(),
        "missing prerequisite: {ANSIBLE_PLAYBOOK} (scripts/setup.sh installs ansible-core)"
    );
    use common::*;
    let efi = v2k_fixtures::build(v2k_fixtures::Variant::RhelShapedEfi)
        .unwrap_or_else(|e| panic!("fixture: {e}"));
    let sim = Vcsim::start();
    let t = tempfile::tempdir().unwrap();
    let w = t.path();
    // Others may pass through, not list, as on a conversion host (the role makes the
    // shard directory 0751): libvirt's QEMU, as its own user, must reach the EFI
    // guest's disks below it — the 0750 shard directory the playbook used to make
    // was what kept it out.
    std::fs::set_permissions(w, std::fs::Permissions::from_mode(0o711)).unwrap();
    let esxi = vcsim_vms(&sim, "av", 0x10);
    let hold = w.join("hold");
    let hook = w.join("pre.sh");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\nif [ \"$(cat {} 2>/dev/null)\" = \"$V2K_VM_NAME\" ]; then sleep 300; fi\n",
            hold.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    let plan = w.join("plan.yaml");
    let mut text = format!(
        "version: 1\nvsphere:\n  \"127.0.0.1:{}\":\n    ca-file: {}\n\
         defaults:\n  validate: false\n  inject: false\n  backend: qemu\n  \
         hooks:\n    pre: {{ command: [{}] }}\nlimits:\n  vms: 2\n  esxi-host-disks: 2\nwaves:\n  - name: w1\n    vms:\n",
        sim.port,
        pki().ca.display(),
        hook.display()
    );
    for name in esxi.keys() {
        text.push_str(&vsphere_entry(&sim, name));
    }
    text.push_str(&format!(
        "  - name: w2\n    vms:\n      - source: {}\n        name: {EFI_VM}\n        \
         validate: true\n        inject: true\n        backend: libvirt\n        disk-bus: scsi\n",
        efi.ova.display()
    ));
    std::fs::write(&plan, text).unwrap();
    // The password reaches the playbook in a vars file (as a vault would), never argv.
    let secrets = w.join("secrets.json");
    std::fs::write(
        &secrets,
        serde_json::json!({ "v2k_vsphere_password": PASSWORD }).to_string(),
    )
    .unwrap();
    std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o600)).unwrap();

    // ---- three hosts, an inventory, the collection on the collections path --------
    let ssh = w.join("ssh");
    std::fs::create_dir_all(&ssh).unwrap();
    keygen(&ssh.join("client"));
    let roots: Vec<PathBuf> = (1..=3).map(|i| w.join(format!("hosts/conv{i}"))).collect();
    let mut sshds: Vec<Sshd> = Vec::new();
    for (i, root) in roots.iter().enumerate() {
        std::fs::create_dir_all(root).unwrap();
        sshds.push(Sshd::start(
            &w.join(format!("sshd{i}")),
            &ssh.join("client.pub"),
        ));
    }
    let write_inventory = |sshds: &[Sshd]| {
        let mut inv = String::from("[conversion_hosts]\n");
        for (i, (root, s)) in roots.iter().zip(sshds).enumerate() {
            inv.push_str(&format!(
                "conv{} ansible_host=127.0.0.1 ansible_port={} v2k_root={}\n",
                i + 1,
                s.port,
                root.display()
            ));
        }
        inv.push_str(&format!(
            "[conversion_hosts:vars]\nansible_user=root\nansible_ssh_private_key_file={}\n\
             ansible_ssh_common_args=-o UserKnownHostsFile={} -o StrictHostKeyChecking=accept-new -o BatchMode=yes\n\
             ansible_python_interpreter=/usr/bin/python3\nv2k_install_path={}\n",
            ssh.join("client").display(),
            ssh.join("known_hosts").display(),
            env!("CARGO_BIN_EXE_v2k")
        ));
        std::fs::write(w.join("inventory.ini"), inv).unwrap();
    };
    write_inventory(&sshds);
    let colls = w.join("collections/ansible_collections/v2k");
    std::fs::create_dir_all(&colls).unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    std::os::unix::fs::symlink(repo.join("ansible"), colls.join("migration")).unwrap();
    let work = w.join("work");
    let playbook = |extra: &[&str]| {
        let mut c = Command::new(ANSIBLE_PLAYBOOK);
        c.arg("-i")
            .arg(w.join("inventory.ini"))
            .arg(repo.join("ansible/playbooks/wave.yml"))
            .arg("-e")
            .arg(format!("v2k_plan={}", plan.display()))
            .arg("-e")
            .arg(format!("v2k_work={}", work.display()))
            .arg("-e")
            .arg(format!("v2k_controller_bin={}", env!("CARGO_BIN_EXE_v2k")))
            .arg("-e")
            .arg(format!("@{}", secrets.display()))
            .args(["-e", "v2k_fetch_every=2"])
            .args(extra)
            .env("ANSIBLE_COLLECTIONS_PATH", w.join("collections"))
            .env("ANSIBLE_LOCAL_TEMP", w.join("ansible-tmp"))
            .env("ANSIBLE_NOCOLOR", "1")
            // One SSH round trip per task instead of several (docs/scale-out.md
            // recommends it for conversion hosts as well).
            .env("ANSIBLE_PIPELINING", "1")
            // Kept beside the output, timed per line; searched for the password below.
            .env("ANSIBLE_LOG_PATH", w.join("ansible.log"))
            .current_dir(w)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    };
    // A playbook run that must succeed: its output.
    let playbook_ok = |extra: &[&str]| -> String { ok(&playbook(extra).output().unwrap()) };
    let assignment = || -> Value {
        serde_json::from_slice(&std::fs::read(work.join("shards/assignment.json")).unwrap())
            .unwrap()
    };

    // ---- check mode: `v2k wave check` on every host, nothing migrated --------------
    let out0 = playbook_ok(&["--check"]);
    for (i, root) in roots.iter().enumerate() {
        let checked = root.join(format!("check-shards/conv{}.yaml", i + 1));
        assert!(
            checked.is_file(),
            "conv{} got no shard to check: {out0}",
            i + 1
        );
        let runs = std::fs::read_dir(root.join("check-shards"))
            .unwrap()
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "run"))
            .count();
        assert_eq!(runs, 0, "check mode ran a wave on conv{}: {out0}", i + 1);
        assert!(
            !root.join("shards").exists(),
            "check mode wrote real shards"
        );
    }
    assert!(
        !work.join("shards").exists(),
        "check mode assigned for real"
    );

    // ---- first run: conv3 is lost while its second VM is in flight -----------------
    // Which VMs conv3 gets is the assignment's: the playbook writes it first; the hold
    // names conv3's second VM as soon as the record is there.
    let run1 = playbook(&[]).spawn().unwrap();
    let shard3 = roots[2].join("shards/conv3.yaml");
    let deadline = Instant::now() + Duration::from_secs(300);
    let lost: Vec<String> = loop {
        if let Ok(b) = std::fs::read(work.join("shards/assignment.json")) {
            let rec: Value = serde_json::from_slice(&b).unwrap();
            let s = rec["shards"]
                .as_array()
                .unwrap()
                .iter()
                .find(|s| s["host"] == "conv3")
                .expect("conv3 got a shard");
            break s["vms"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v["name"].as_str().unwrap().to_string())
                .collect();
        }
        assert!(Instant::now() < deadline, "the playbook never assigned");
        std::thread::sleep(Duration::from_millis(100));
    };
    // conv3's first wave's VMs (the second wave's EFI guest may be conv3's too).
    let conv3_had_efi = lost.iter().any(|v| v == EFI_VM);
    let lost: Vec<String> = lost.into_iter().filter(|v| esxi.contains_key(v)).collect();
    assert_eq!(lost.len(), 2);
    std::fs::write(&hold, &lost[1]).unwrap();
    // The controller must know what conv3 finished before it is lost: wait for the
    // journal the playbook fetches while the run goes on (every 2 s here).
    let fetched3 = work.join("fetched/conv3/conv3.run");
    loop {
        let j = journal(&fetched3);
        let started = j
            .iter()
            .any(|r| r["type"] == "vm-started" && r["vm"] == lost[1].as_str());
        let done = j
            .iter()
            .any(|r| r["type"] == "vm-finished" && r["vm"] == lost[0].as_str());
        if started && done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the controller never fetched conv3's journal with its second VM started"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The host is lost: its sshd with the sessions Ansible keeps open, then its v2k
    // and the hook's sleep (their group).
    sshds[2].lose();
    let (_, pgrp) = pid_with_arg(&shard3).expect("conv3's v2k is running");
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgrp}")])
        .status();
    std::fs::remove_file(&hold).unwrap();
    let o = run1.wait_with_output().unwrap();
    let out1 = String::from_utf8_lossy(&o.stdout).into_owned();
    // conv3 became unreachable; the others ran and were fetched, the merge ran.
    assert!(
        out1.contains("UNREACHABLE") && out1.contains("Merge the reports"),
        "{out1}"
    );

    // ---- rerun without conv3 -------------------------------------------------------
    let out2 = playbook_ok(&["-e", r#"{"v2k_exclude": ["conv3"]}"#]);
    let rec = assignment();
    assert_eq!(rec["generation"], 2, "{rec:#}");
    let moved: Vec<&str> = rec["moved"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["vm"].as_str().unwrap())
        .collect();
    let mut expected = vec![lost[1].as_str()];
    if conv3_had_efi {
        expected.push(EFI_VM);
    }
    assert_eq!(moved, expected, "{rec:#}");

    // ---- the journals: every VM migrated exactly once, the budget held -------------
    let runs: Vec<PathBuf> = roots
        .iter()
        .flat_map(|root| std::fs::read_dir(root.join("shards")).unwrap().flatten())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "run"))
        .collect();
    assert_exactly_once_within_budget(&runs, &esxi, 2);
    let merged = || -> Value {
        serde_json::from_slice(&std::fs::read(work.join("merged/w1/wave-report.json")).unwrap())
            .unwrap()
    };
    let r = merged();
    assert_eq!(r["summary"]["migrated"], 6, "{r:#}");
    assert_eq!(r["summary"]["total"], 6, "{r:#}");
    assert!(r["conflicts"].is_null(), "{r:#}");
    let r2: Value =
        serde_json::from_slice(&std::fs::read(work.join("merged/w2/wave-report.json")).unwrap())
            .unwrap();
    assert_eq!(r2["summary"]["validated"], 1, "{r2:#}");
    // The EFI guest: validated once, on one host, as its layout must be.
    let efi_runs: Vec<PathBuf> = runs
        .iter()
        .map(|r| r.join("vms").join(EFI_VM).join("out"))
        .filter(|o| o.join("report.json").is_file())
        .collect();
    assert_eq!(efi_runs.len(), 1, "{efi_runs:?}");
    assert_efi_guest_validated(&efi_runs[0], &efi);

    // ---- conv3 is back: a rerun with every host present resumes, migrates nothing ---
    // `vm-started` records in every run's journal (of one VM, or of all).
    let started = |vm: Option<&str>| -> usize {
        runs.iter()
            .flat_map(|r| journal(r))
            .filter(|x| x["type"] == "vm-started" && vm.is_none_or(|v| x["vm"] == v))
            .count()
    };
    let started_before = started(None);
    sshds[2] = Sshd::start(&w.join("sshd2-back"), &ssh.join("client.pub"));
    write_inventory(&sshds);
    let out3 = playbook_ok(&[]);
    let rec = assignment();
    assert_eq!(rec["generation"], 2, "a rerun reassigned: {rec:#}");
    let started_after = started(None);
    assert_eq!(
        started_after, started_before,
        "the rerun started VMs again: {out3}"
    );
    // The playbook says so: each host with shards migrated nothing in this run.
    let said = out3.matches("migrated in this run: none;").count();
    assert_eq!(
        said, 2,
        "conv1 and conv2 should say they migrated nothing: {out3}"
    );
    let r = merged();
    assert_eq!(r["summary"]["migrated"], 6, "{r:#}");
    assert!(r["conflicts"].is_null(), "{r:#}");
    assert_eq!(started(Some(EFI_VM)), 1, "the EFI guest ran more than once");

    // ---- the password: in no output and in no file the runs or the controller wrote --
    for out in [&out0, &out1, &out2, &out3] {
        assert!(!out.contains(PASSWORD), "the password in Ansible's output");
    }
    let mut files = vec![work.clone(), w.join("ansible.log")];
    files.extend(roots.iter().cloned());
    while let Some(p) = files.pop() {
        if p.is_dir() {
            files.extend(std::fs::read_dir(&p).unwrap().flatten().map(|e| e.path()));
        } else if let Ok(b) = std::fs::read(&p) {
            assert!(
                !String::from_utf8_lossy(&b).contains(PASSWORD),
                "the password in {}",
                p.display()
            );
        }
    }
}

/// The EFI fixture's name in the Ansible test's plan.
const EFI_VM: &str = "rhel-efi";

/// The rhel-shaped-efi guest's migration, validated: UEFI with a fresh per-VM variable
/// store in the run directory (the boot entry lived only in VMware's NVRAM, so the
/// injector installed the removable-media fallback loader), Secure Boot stated off as
/// the VMX declares, virtio-scsi, and the static address, gateway and resolver kept.
fn assert_efi_guest_validated(out: &Path, f: &v2k_fixtures::Fixture) {
    let r: Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(r["result"], "validated", "{r:#}");
    let v = &r["validation"];
    assert_eq!(v["backend"]["kind"], "libvirt", "{v:#}");
    let checks = v["checks"].as_array().unwrap();
    assert!(checks.iter().all(|c| c["passed"] == true), "{checks:#?}");
    let reason = |id: &str| -> String {
        let c = checks
            .iter()
            .find(|c| c["id"] == id)
            .unwrap_or_else(|| panic!("no check {id}: {checks:#?}"));
        c["reason"].as_str().unwrap().to_string()
    };
    for id in [
        "agent-report",
        "root-rw",
        "mounts",
        "nic:ens192",
        "failed-units",
    ] {
        reason(id);
    }
    assert!(reason("mounts").contains("/data"), "{checks:#?}");
    assert!(
        reason("static-ip:ens192").contains(&f.guest.ipv4.address),
        "{checks:#?}"
    );
    let gw = f.guest.ipv4.gateway.as_deref().unwrap();
    assert!(reason("route").contains(gw), "{checks:#?}");
    assert!(reason("dns").contains(&f.guest.ipv4.dns[0]), "{checks:#?}");
    assert!(
        reason("firmware").starts_with("UEFI, Secure Boot off"),
        "{checks:#?}"
    );
    let agent = &v["evidence"]["agent"];
    assert_eq!(agent["nics"][0]["ipv4"][0], f.guest.ipv4.address.as_str());
    // The fixed probe and the counters ran in the guest (docs/evidence.md, "after").
    let perf = &agent["perf"];
    assert!(perf["probe"]["cpu-ms"].as_f64().unwrap() > 0.0, "{perf}");
    let disks = perf["disks"].as_array().unwrap();
    assert!(
        disks.iter().any(|d| d[0] == "sda") && !disks.iter().any(|d| d[0] == "vda"),
        "on virtio-scsi the guest's disks are sdX: {agent}"
    );
    let shot = PathBuf::from(v["evidence"]["screenshot"].as_str().expect("a screenshot"));
    assert!(std::fs::read(&shot).unwrap().starts_with(b"\x89PNG"));
    // The fallback loader is what made it bootable with empty variables.
    let log: Value =
        serde_json::from_slice(&std::fs::read(out.join("conversion-log.json")).unwrap()).unwrap();
    assert_eq!(
        log["inspection"]["bootloader"]["kind"], "grub2-efi",
        "{log:#}"
    );
    assert!(
        log["changes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["step"] == "efi-fallback"
                && c["file"]
                    .as_str()
                    .is_some_and(|p| p.eq_ignore_ascii_case("/boot/efi/EFI/BOOT/BOOTX64.EFI"))),
        "{log:#}"
    );
    // The domain names the VM's own variable store in its run directory, states Secure
    // Boot off, puts the disks on virtio-scsi; libvirt's schema accepts it.
    let xml = std::fs::read_to_string(out.join("domain.xml")).unwrap();
    assert!(
        xml.contains("<controller type='scsi'") && xml.contains("model='virtio-scsi'"),
        "{xml}"
    );
    assert!(
        xml.contains("bus='scsi'") && !xml.contains("bus='virtio'/>"),
        "{xml}"
    );
    assert!(xml.contains("<os firmware='efi'>"), "{xml}");
    assert!(
        xml.contains("<feature enabled='no' name='secure-boot'/>"),
        "{xml}"
    );
    let nvram = xml
        .split("<nvram>")
        .nth(1)
        .and_then(|s| s.split("</nvram>").next())
        .expect("an <nvram> element");
    assert!(Path::new(nvram).starts_with(out), "{nvram}");
    assert!(Path::new(nvram).is_file(), "{nvram}");
    let o = Command::new("virt-xml-validate")
        .arg(out.join("domain.xml"))
        .output()
        .expect("virt-xml-validate (libvirt-clients)");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// Six VMs in the simulator named `PREFIX1`..`PREFIX6` (one 2 MiB flat disk each,
/// patterned from `seed`), alternately on the standalone ESXi host `DC0_H0` and the
/// cluster's `DC0_C0_H0`: VM name → its ESXi host.
fn vcsim_vms(sim: &common::Vcsim, prefix: &str, seed: u32) -> BTreeMap<String, String> {
    use common::*;
    let c = sim.client();
    let ds = datastore_dir(sim);
    let mut esxi: BTreeMap<String, String> = BTreeMap::new();
    for i in 1..=6u32 {
        let name = format!("{prefix}{i}");
        let host = if i % 2 == 0 { "DC0_H0" } else { "DC0_C0_H0" };
        let dir = ds.join(&name);
        std::fs::create_dir_all(&dir).unwrap();
        const SIZE: usize = 2 << 20;
        std::fs::write(dir.join("d-flat.vmdk"), pattern(SIZE, seed + i)).unwrap();
        std::fs::write(
            dir.join("d.vmdk"),
            format!(
                "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n\
                 createType=\"vmfs\"\n\n# Extent description\nRW {} VMFS \"d-flat.vmdk\"\n\n\
                 ddb.adapterType = \"pvscsi\"\n",
                SIZE / 512
            ),
        )
        .unwrap();
        create_vm_on_host(
            &c,
            &name,
            &[(format!("[LocalDS_0] {name}/d.vmdk"), SIZE as u64)],
            &format!("00:50:56:{:02x}:03:0{i}", seed & 0xff),
            host,
        );
        esxi.insert(name, host.to_string());
    }
    esxi
}

/// A wave plan's VM entry for `name` in the simulator.
fn vsphere_entry(sim: &common::Vcsim, name: &str) -> String {
    format!(
        "      - source: vsphere://{}@127.0.0.1:{}/DC0/vm/{name}\n",
        common::USER.replace('@', "%40"),
        sim.port
    )
}

#[path = "../../vsphere/tests/common/mod.rs"]
mod common;

/// The ESXi hosts from vSphere's own inventory: six small VMs in VMware's simulator,
/// three on the standalone ESXi host `DC0_H0` and three on the cluster's `DC0_C0_H0`
/// (the plan names none: `wave assign` reads each VM's `runtime.host`), budget 2
/// disks per ESXi host, three conversion hosts running their shards at once from the
/// simulator's datastore (disks streamed and verified, no guest surgery, no boot).
/// The journals' timestamps show neither ESXi host ever had more than 2 disks in
/// flight; every VM migrated exactly once; the merged report is complete.
#[test]
fn a_sharded_wave_from_vcsim_keeps_each_esxi_hosts_budget() {
    use common::*;
    let sim = Vcsim::start();
    let esxi = vcsim_vms(&sim, "sv", 0);
    let t = tempfile::tempdir().unwrap();
    let pw = t.path().join("vc.pw");
    std::fs::write(&pw, format!("{PASSWORD}\n")).unwrap();
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
    let plan = t.path().join("plan.yaml");
    let mut text = format!(
        "version: 1\nvsphere:\n  \"127.0.0.1:{}\":\n    password-file: {}\n    ca-file: {}\n\
         defaults:\n  validate: false\n  inject: false\n  backend: qemu\n\
         limits:\n  vms: 3\n  esxi-host-disks: 2\nwaves:\n  - name: w1\n    vms:\n",
        sim.port,
        pw.display(),
        pki().ca.display()
    );
    for name in esxi.keys() {
        text.push_str(&vsphere_entry(&sim, name));
    }
    std::fs::write(&plan, text).unwrap();
    let shards = t.path().join("shards");
    let o = v2k()
        .args([
            "wave",
            "assign",
            "--hosts",
            "conv1,conv2,conv3",
            "--json",
            "-o",
        ])
        .arg(&shards)
        .arg(&plan)
        .env_remove("V2K_VSPHERE_PASSWORD")
        .output()
        .unwrap();
    let rec: Value = serde_json::from_str(&ok(&o)).unwrap();
    // The ESXi hosts came from the inventory, each with its budget split.
    let budgets = &rec["budgets"]["esxi-hosts"];
    assert_eq!(budgets["DC0_H0"], 2, "{rec:#}");
    assert_eq!(budgets["DC0_C0_H0"], 2, "{rec:#}");
    let mut children = Vec::new();
    let mut runs = Vec::new();
    for s in rec["shards"].as_array().unwrap() {
        let root = t.path().join("hosts").join(s["host"].as_str().unwrap());
        std::fs::create_dir_all(&root).unwrap();
        let file = s["plan"].as_str().unwrap();
        std::fs::copy(shards.join(file), root.join(file)).unwrap();
        runs.push(root.join(file.replace(".yaml", ".run")));
        children.push(
            v2k()
                .args(["wave", "run", "--json"])
                .arg(root.join(file))
                .env_remove("V2K_VSPHERE_PASSWORD")
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        );
    }
    for c in children {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    assert_exactly_once_within_budget(&runs, &esxi, 2);
    let merged = t.path().join("merged");
    let o = v2k()
        .args(["wave", "report", "-o"])
        .arg(&merged)
        .arg("--merge")
        .args(&runs)
        .output()
        .unwrap();
    ok(&o);
    let r: Value =
        serde_json::from_slice(&std::fs::read(merged.join("w1/wave-report.json")).unwrap())
            .unwrap();
    assert_eq!(
        (&r["summary"]["total"], &r["summary"]["migrated"]),
        (&Value::from(6), &Value::from(6)),
        "{r:#}"
    );
}
