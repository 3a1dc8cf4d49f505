//! VMware tuning carried to KVM, on real tools and without a guest: each mapping's
//! domain XML (CPU affinity → `<vcpupin>`, NUMA affinity → `<numatune>`, vNUMA →
//! `<cpu><numa>`, cores per socket → `<topology>`, CPU and memory hot-add →
//! `<vcpu current>`/`<maxMemory>`, a full reservation → hugepages and `<locked/>`)
//! is checked by `virt-xml-validate`, defined in libvirt (`qemu:///system`), and —
//! where this machine can run it — started under TCG with no disk (the firmware finds
//! nothing to boot and waits, which is enough for libvirt and QEMU to have built the
//! machine), asked what it runs, destroyed and undefined. Every domain is named after
//! its test and this process. Missing tools are failures, never skips.
//!
//! The hugepage domain is validated and defined but not started: this machine
//! reserves no hugepages (`vm.nr_hugepages` is 0), and a test must not change the
//! host's kernel settings; QEMU would fail to allocate its memory. What v2k says on
//! such a host (the `hugepages-unavailable` concern) is asserted instead.

use std::path::Path;
use std::process::{Command, Output};

use v2k_inventory::model::{SourceKind, Tuning, Vm};
use v2k_kvm_target::{
    domain_xml, qemu_argv, Accel, DiskBus, GuestFeatures, HostSource, HostTopology, NetworkMap,
    QemuOptions, Target,
};

fn virsh(args: &[&str]) -> Output {
    Command::new("virsh")
        .args(["-c", "qemu:///system"])
        .args(args)
        .output()
        .expect("virsh (libvirt-clients; libvirtd running: virtlogd -d; libvirtd -d)")
}

fn ok(o: &Output, what: &str) -> String {
    assert!(
        o.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&o.stderr),
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A VM of `vcpus` vCPUs in sockets of `cores`, 256 MiB, no disk, with `tuning`,
/// tuned onto `host`; named after the test and this process.
fn tuned(test: &str, vcpus: u32, cores: u32, tuning: Tuning, host: &HostTopology) -> Target {
    let mut vm = Vm::new_empty(SourceKind::Vmx, "/x/tuned.vmx".into());
    vm.name = format!("v2k-test-{}-{test}", std::process::id());
    vm.cpu.count = vcpus;
    vm.cpu.cores_per_socket = cores;
    vm.memory_mib = 256;
    vm.tuning = tuning;
    let mut t = Target::from_vm(
        &vm,
        &[],
        DiskBus::VirtioBlk,
        &NetworkMap::default(),
        Accel::Tcg,
        Path::new("/tmp"),
    )
    .unwrap();
    let concerns = t.tune(&vm, host);
    assert!(concerns.is_empty(), "{concerns:?}");
    t
}

/// Validates and defines `t`'s XML; starts it when `start`, returning what
/// `virsh` reports of the running domain (`vcpupin`, `vcpucount`, `numatune`,
/// its live XML), then destroys and undefines it.
fn run(t: &Target, dir: &Path, start: bool) -> (String, String) {
    let xml = domain_xml(t, &GuestFeatures::default());
    let path = dir.join("domain.xml");
    std::fs::write(&path, &xml).unwrap();
    let o = Command::new("virt-xml-validate")
        .arg(&path)
        .arg("domain")
        .output()
        .expect("virt-xml-validate (libvirt-clients, scripts/setup.sh)");
    assert!(
        o.status.success(),
        "{}\n{xml}",
        String::from_utf8_lossy(&o.stderr)
    );
    let name = t.safe_name();
    ok(&virsh(&["define", path.to_str().unwrap()]), "virsh define");
    let mut live = String::new();
    let mut asked = String::new();
    let started = if start {
        let o = virsh(&["start", &name]);
        if o.status.success() {
            live = String::from_utf8_lossy(&virsh(&["dumpxml", &name]).stdout).into_owned();
            for q in [
                vec!["domstate", name.as_str()],
                vec!["vcpucount", name.as_str()],
                vec!["vcpupin", name.as_str()],
                vec!["numatune", name.as_str()],
            ] {
                asked.push_str(&String::from_utf8_lossy(&virsh(&q).stdout));
            }
            let _ = virsh(&["destroy", &name]);
        }
        Some(o)
    } else {
        live =
            String::from_utf8_lossy(&virsh(&["dumpxml", "--inactive", &name]).stdout).into_owned();
        None
    };
    ok(&virsh(&["undefine", &name]), "virsh undefine");
    if let Some(o) = started {
        ok(&o, &format!("virsh start {name}\n{xml}"));
        assert!(asked.contains("running"), "{asked}");
    }
    (live, asked)
}

/// A two-CPU, one-node host like this machine, for the mappings that must start
/// here; with `hugepages` 2 MiB pages reserved.
fn small_host(hugepages: u64) -> HostTopology {
    let caps = format!(
        "<capabilities><host><topology><cells num='1'><cell id='0'>\
         <memory unit='KiB'>4194304</memory><pages unit='KiB' size='2048'>{hugepages}</pages>\
         <cpus num='2'><cpu id='0'/><cpu id='1'/></cpus></cell></cells></topology></host></capabilities>"
    );
    HostTopology::from_capabilities(&caps, "test").unwrap()
}

#[test]
fn affinity_numa_and_topology_start_pinned_in_libvirt() {
    let dir = tempfile::tempdir().unwrap();
    let t = tuned(
        "pinned",
        4,
        2,
        Tuning {
            cpu_affinity: vec![1],
            numa_node_affinity: vec![0],
            vnuma_max_vcpus_per_node: Some(2),
            ..Tuning::default()
        },
        &small_host(0),
    );
    let xml = domain_xml(&t, &GuestFeatures::default());
    assert!(xml.contains("<vcpupin vcpu='3' cpuset='1'/>"), "{xml}");
    assert!(xml.contains("<memory mode='strict' nodeset='0'/>"), "{xml}");
    assert!(
        xml.contains("<topology sockets='2' dies='1' cores='2' threads='1'/>"),
        "{xml}"
    );
    assert!(
        xml.contains("<cell id='1' cpus='2-3' memory='128' unit='MiB'/>"),
        "{xml}"
    );
    let (live, asked) = run(&t, dir.path(), true);
    // libvirt applied the pinning (every vCPU on host CPU 1) and the binding.
    assert!(live.contains("<vcpupin vcpu='0' cpuset='1'/>"), "{live}");
    assert!(
        live.contains("<cell id='1' cpus='2-3' memory='131072' unit='KiB'/>"),
        "{live}"
    );
    // `virsh vcpupin`: " 0      1" for each vCPU; `virsh numatune`: strict on node 0.
    let pins: Vec<Vec<&str>> = asked
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|w| w.len() == 2 && w[0].parse::<u32>().is_ok())
        .collect();
    assert_eq!(pins.len(), 4, "{asked}");
    assert!(pins.iter().all(|w| w[1] == "1"), "{asked}");
    assert!(asked.contains("numa_mode      : strict"), "{asked}");
    assert!(asked.contains("numa_nodeset   : 0"), "{asked}");

    // The direct-QEMU form (run-qemu.sh) places the VM the same way: the script runs
    // QEMU under `taskset -c 1`, its vCPU cells' memory backends are bound to node 0.
    // Started for real (no disk, TCG) and asked through /proc.
    let q = QemuOptions {
        serial: format!("file:{}", dir.path().join("serial.log").display()),
        snapshot: false,
    };
    let argv = qemu_argv(&t, &q, &GuestFeatures::default());
    let script = v2k_kvm_target::qemu_script(&argv, &t.tuning.vcpu_cpuset);
    assert!(
        script.contains("exec taskset -c 1 qemu-system-x86_64"),
        "{script}"
    );
    assert!(
        argv.iter()
            .any(|a| a.contains("\"host-nodes\":[0]") && a.contains("\"policy\":\"bind\"")),
        "{argv:?}"
    );
    let path = dir.path().join("run-qemu.sh");
    std::fs::write(&path, &script).unwrap();
    let mut child = Command::new("sh")
        .arg(&path)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    // QEMU has exec'd and built the machine once its memory is mapped with the policy.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let (status, maps) = loop {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let maps = std::fs::read_to_string(format!("/proc/{pid}/numa_maps")).unwrap_or_default();
        if status.contains("Name:\tqemu-system-x86") && maps.contains("bind:0") {
            break (status, maps);
        }
        if let Ok(Some(st)) = child.try_wait() {
            let mut err = String::new();
            use std::io::Read;
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            panic!("run-qemu.sh ended ({st}): {err}\n{script}");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "QEMU never bound its memory: {status}\n{maps}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(status.contains("Cpus_allowed_list:\t1\n"), "{status}");
    assert!(maps.contains("bind:0"), "{maps}");
}

#[test]
fn cpu_and_memory_hot_add_start_with_room_to_grow() {
    let dir = tempfile::tempdir().unwrap();
    let t = tuned(
        "hotadd",
        1,
        1,
        Tuning {
            cpu_hot_add: true,
            memory_hot_add: true,
            ..Tuning::default()
        },
        &small_host(0),
    );
    let xml = domain_xml(&t, &GuestFeatures::default());
    assert!(
        xml.contains("<vcpu placement='static' current='1'>2</vcpu>"),
        "{xml}"
    );
    assert!(
        xml.contains("<maxMemory slots='16' unit='MiB'>4096</maxMemory>"),
        "{xml}"
    );
    let (_, asked) = run(&t, dir.path(), true);
    // `virsh vcpucount`: two at most, one now.
    let count = |kind: &str| {
        asked
            .lines()
            .find(|l| l.starts_with(kind) && l.contains("live"))
            .and_then(|l| l.split_whitespace().last().map(str::to_string))
    };
    assert_eq!(count("maximum").as_deref(), Some("2"), "{asked}");
    assert_eq!(count("current").as_deref(), Some("1"), "{asked}");
    // The direct-QEMU form says the same.
    let argv = qemu_argv(&t, &QemuOptions::default(), &GuestFeatures::default());
    assert!(
        argv.iter()
            .any(|a| a == "1,maxcpus=2,sockets=2,cores=1,threads=1"),
        "{argv:?}"
    );
    assert!(
        argv.iter().any(|a| a == "256,slots=16,maxmem=4096M"),
        "{argv:?}"
    );
}

#[test]
fn a_full_reservation_becomes_locked_hugepages_where_the_host_has_them() {
    let dir = tempfile::tempdir().unwrap();
    let full = Tuning {
        memory_pinned: true,
        ..Tuning::default()
    };
    // A destination with 128 pages of 2 MiB: all 256 MiB on hugepages, locked.
    let t = tuned("hugepages", 1, 1, full.clone(), &small_host(128));
    let xml = domain_xml(&t, &GuestFeatures::default());
    assert!(
        xml.contains(
            "<hugepages>\n      <page size='2048' unit='KiB'/>\n    </hugepages>\n    <locked/>"
        ),
        "{xml}"
    );
    // The direct-QEMU form: the machine's RAM on a preallocated hugetlbfs backend,
    // locked (QEMU's -overcommit mem-lock, libvirt's <locked/>).
    let argv = qemu_argv(&t, &QemuOptions::default(), &GuestFeatures::default());
    let joined = argv.join(" ");
    assert!(joined.contains(",memory-backend=v2kram"), "{joined}");
    assert!(
        joined.contains(
            "{\"id\":\"v2kram\",\"mem-path\":\"/dev/hugepages\",\"prealloc\":true,\"qom-type\":\"memory-backend-file\",\"size\":268435456}"
        ),
        "{joined}"
    );
    assert!(joined.contains("-overcommit mem-lock=on"), "{joined}");
    // Not started: see the file's comment (this machine reserves no hugepages).
    let (defined, _) = run(&t, dir.path(), false);
    assert!(
        defined.contains("<locked/>") && defined.contains("<page size='2048'"),
        "{defined}"
    );

    // This machine, read as v2k reads it without --host-topology.
    let local = HostSource::Local.load().unwrap();
    let mut vm = Vm::new_empty(SourceKind::Vmx, "/x/tuned.vmx".into());
    vm.cpu.count = 1;
    vm.memory_mib = 256;
    vm.tuning = full;
    let mut t = Target::from_vm(
        &vm,
        &[],
        DiskBus::VirtioBlk,
        &NetworkMap::default(),
        Accel::Tcg,
        Path::new("/tmp"),
    )
    .unwrap();
    let concerns = t.tune(&vm, &local);
    let reserved: u64 = local.hugepages(&[]).iter().map(|(s, n)| s * n).sum();
    if reserved >= 256 * 1024 {
        assert!(t.tuning.hugepage_kib.is_some(), "{local:?}");
    } else {
        assert_eq!(concerns.len(), 1, "{concerns:?}");
        assert_eq!(concerns[0].id, "hugepages-unavailable");
        assert!(
            concerns[0].message.contains("vm.nr_hugepages"),
            "{}",
            concerns[0].message
        );
        assert!(!domain_xml(&t, &GuestFeatures::default()).contains("<memoryBacking>"));
    }
}
