//! The vSphere client against VMware's vCenter simulator (vcsim, govmomi 0.24):
//! inventory mapping, a VM built in the simulator from uploaded disks and streamed
//! into QCOW2, a snapshot chain staged and consolidated, wrong password, wrong
//! thumbprint, an expired session, an interrupted download. What the simulator lacks is unit-tested on recorded responses instead
//! (paging: `client::tests`; capacityInBytes and vCenter's `xsi:` prefix:
//! `inventory::tests`; sessions on `/folder`, which vcsim does not check: `retry.rs`);
//! NFC export and CBT queries are not used by v2k.

mod common;

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::*;
use v2k_converters::convert::{NoProgress, Options as ConvOptions};
use v2k_inventory::model::*;
use v2k_vsphere::client::PropertySpec;
use v2k_vsphere::convert::{disk_jobs, download_and_convert};
use v2k_vsphere::datastore::{DatastorePath, DownloadProgress, NoDownloadProgress};
use v2k_vsphere::inventory::{get_vm, list_vms, vms_at, POWERED_ON};
use v2k_vsphere::{Client, Error, FaultKind, MoRef, Thumbprint, TlsMode};

#[test]
fn maps_the_simulators_vms_into_the_model() {
    let sim = Vcsim::start();
    let c = sim.client();
    let vms = list_vms(&c).unwrap();
    // VPX(): 1 datacenter, a standalone host and a cluster, 2 VMs per resource pool.
    assert_eq!(
        vms.len(),
        4,
        "{:?}",
        vms.iter().map(|v| &v.name).collect::<Vec<_>>()
    );
    for vm in &vms {
        assert_eq!(vm.source.kind, SourceKind::Vsphere);
        let vs = vm.vsphere.as_ref().unwrap();
        assert_eq!(vs.datacenter, "DC0");
        assert_eq!(
            vs.inventory_path.as_deref(),
            Some(format!("DC0/vm/{}", vm.name).as_str())
        );
        assert!(vs.host.as_deref().unwrap().starts_with("DC0_"), "{vs:?}");
        assert_eq!(vs.datastores, ["LocalDS_0"]);
        assert!(vs.vmx_path.as_deref().unwrap().starts_with("[LocalDS_0] "));
        assert!(vm.bios_uuid.as_ref().unwrap().len() == 36);
        assert_eq!(vm.power_state, Some(PowerState::PoweredOn));
        assert_eq!(vm.concerns[0].id, POWERED_ON);
        assert_eq!(vm.concerns[0].severity, Severity::Critical);
        assert_eq!(vm.memory_mib, 32);
        assert_eq!(vm.hardware_version, Some(13));
        // The built-in VMs have only capacityInKB.
        let d = &vm.disks[0];
        assert_eq!(d.capacity, Some(1 << 20));
        assert_eq!(d.slot.map(|s| s.bus), Some(BusKind::Scsi));
        match &d.location {
            DiskLocation::Datastore {
                datastore,
                path,
                datacenter,
                thin,
            } => {
                assert_eq!(datastore, "LocalDS_0");
                assert!(path.starts_with(&vm.name), "{path}");
                assert_eq!(datacenter, "DC0");
                assert!(*thin);
            }
            other => panic!("{other:?}"),
        }
        assert!(vm
            .controllers
            .iter()
            .any(|c| c.model == ControllerModel::Pvscsi));
        let n = &vm.nics[0];
        assert_eq!(n.model, NicModel::E1000);
        assert!(n.mac.as_ref().unwrap().starts_with("00:0c:29:"));
        // Distributed port group, named through the inventory.
        assert_eq!(n.network.as_deref(), Some("DC0_DVPG0"));
        assert!(n.dvs.as_ref().unwrap().portgroup_id.is_some());
    }
    let one = get_vm(&c, "DC0/vm/DC0_H0_VM0").unwrap();
    assert_eq!(Some(&one), vms.iter().find(|v| v.name == "DC0_H0_VM0"));
    let e = get_vm(&c, "DC0/vm/no-such-vm").unwrap_err();
    assert_eq!(e.fault(), Some(&FaultKind::ManagedObjectNotFound));
    // A pattern lists the matching VMs, sorted.
    let a = v2k_vsphere::Address::parse(&format!(
        "vsphere://u@127.0.0.1:{}/DC0/vm/DC0_H0_*",
        sim.port
    ))
    .unwrap();
    let names: Vec<String> = vms_at(&c, &a)
        .unwrap()
        .into_iter()
        .map(|v| v.name)
        .collect();
    assert_eq!(names, ["DC0_H0_VM0", "DC0_H0_VM1"]);
}

/// A descriptor as ESXi writes it for a flat disk.
fn descriptor(flat: &str, size: usize) -> Vec<u8> {
    format!(
        "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n\
         createType=\"vmfs\"\n\n# Extent description\nRW {} VMFS \"{flat}\"\n\n\
         ddb.adapterType = \"pvscsi\"\nddb.virtualHWVersion = \"13\"\n",
        size / 512
    )
    .into_bytes()
}

fn moref_of(c: &Client, kind: &str, name: &str) -> MoRef {
    let s = c.session();
    let root = c.content().unwrap().root_folder;
    let objs = c
        .block_on(s.retrieve_in_container(
            &root,
            &[PropertySpec {
                kind: kind.into(),
                paths: vec!["name".into()],
            }],
        ))
        .unwrap();
    objs.into_iter()
        .find(|o| o.text("name") == Some(name))
        .unwrap_or_else(|| panic!("no {kind} {name}"))
        .obj
}

/// Uploads `disks` into `[LocalDS_0] NAME/` and creates a powered-off VM using them
/// (CreateVM_Task): PVSCSI, VMXNET3 on "VM Network" with a static MAC, EFI.
fn create_vm(c: &Client, name: &str, disks: &[Vec<u8>]) {
    let mut devices = String::from(
        "<deviceChange><operation>add</operation><device xsi:type=\"ParaVirtualSCSIController\">\
         <key>-100</key><busNumber>0</busNumber><sharedBus>noSharing</sharedBus></device></deviceChange>",
    );
    for (i, data) in disks.iter().enumerate() {
        let flat = format!("{name}_{i}-flat.vmdk");
        let desc = DatastorePath::parse(&format!("[LocalDS_0] {name}/{name}_{i}.vmdk")).unwrap();
        c.put_file(&desc.sibling(&flat).unwrap(), "DC0", data.clone())
            .unwrap();
        c.put_file(&desc, "DC0", descriptor(&flat, data.len()))
            .unwrap();
        devices.push_str(&format!(
            "<deviceChange><operation>add</operation><device xsi:type=\"VirtualDisk\"><key>{}</key>\
             <backing xsi:type=\"VirtualDiskFlatVer2BackingInfo\"><fileName>{desc}</fileName>\
             <diskMode>persistent</diskMode><thinProvisioned>false</thinProvisioned></backing>\
             <controllerKey>-100</controllerKey><unitNumber>{i}</unitNumber>\
             <capacityInKB>{}</capacityInKB><capacityInBytes>{}</capacityInBytes></device></deviceChange>",
            -101 - i as i32,
            data.len() / 1024,
            data.len()
        ));
    }
    devices.push_str(
        "<deviceChange><operation>add</operation><device xsi:type=\"VirtualVmxnet3\"><key>-200</key>\
         <backing xsi:type=\"VirtualEthernetCardNetworkBackingInfo\"><deviceName>VM Network</deviceName></backing>\
         <addressType>manual</addressType><macAddress>00:50:56:01:02:03</macAddress></device></deviceChange>",
    );
    let spec = format!(
        "<config><name>{name}</name><guestId>rhel7_64Guest</guestId>\
         <files><vmPathName>[LocalDS_0] {name}/{name}.vmx</vmPathName></files>\
         <numCPUs>2</numCPUs><numCoresPerSocket>1</numCoresPerSocket><memoryMB>1024</memoryMB>\
         {devices}<firmware>efi</firmware></config>"
    );
    let folder = {
        let dc = moref_of(c, "Datacenter", "DC0");
        let o = c
            .block_on(c.session().retrieve_one(
                &dc,
                &PropertySpec {
                    kind: "Datacenter".into(),
                    paths: vec!["vmFolder".into()],
                },
            ))
            .unwrap();
        MoRef::from_element(o.get("vmFolder").unwrap()).unwrap()
    };
    let pool = moref_of(c, "ResourcePool", "Resources");
    let host = moref_of(c, "HostSystem", "DC0_H0");
    let r = c
        .call(
            "CreateVM_Task",
            &folder,
            &format!("{spec}{}{}", pool.to_xml("pool"), host.to_xml("host")),
        )
        .unwrap();
    let task = MoRef::from_element(r.child("returnval").unwrap()).unwrap();
    c.wait_for_task(&task, Duration::from_secs(30)).unwrap();
}

struct Counting {
    last: Mutex<Vec<u64>>,
    resumes: Mutex<Vec<(usize, u64)>>,
}

impl DownloadProgress for Counting {
    fn progress(&self, disk: usize, done: u64, _total: u64, rate: f64) {
        assert!(rate >= 0.0);
        let mut l = self.last.lock().unwrap();
        if l.len() <= disk {
            l.resize(disk + 1, 0);
        }
        assert!(done >= l[disk], "progress goes forward");
        l[disk] = done;
    }
    fn resumed(&self, disk: usize, at: u64, _reason: &str) {
        self.resumes.lock().unwrap().push((disk, at));
    }
}

fn download_vm(c: &Client, path: &str, out: &Path, progress: &Counting) -> Vec<std::path::PathBuf> {
    let vm = get_vm(c, path).unwrap();
    let jobs = disk_jobs(&vm, |i| out.join(format!("disk{i}.qcow2"))).unwrap();
    let results = download_and_convert(c, &jobs, &ConvOptions::default(), 2, progress, &NoProgress);
    for r in &results {
        if let Err(e) = r {
            panic!("download and convert: {e}");
        }
    }
    jobs.into_iter().map(|j| j.output).collect()
}

#[test]
fn a_vm_built_from_uploaded_disks_is_mapped_and_streamed_into_qcow2() {
    let sim = Vcsim::start();
    let c = sim.client();
    let disks = vec![pattern(9 << 20, 7), pattern((3 << 20) + 4096, 11)];
    create_vm(&c, "fixture", &disks);

    let vm = get_vm(&c, "DC0/vm/fixture").unwrap();
    assert_eq!(vm.name, "fixture");
    assert_eq!(vm.power_state, Some(PowerState::PoweredOff));
    assert!(!vm.concerns.iter().any(|c| c.id == POWERED_ON));
    assert_eq!(vm.guest_os.id.as_deref(), Some("rhel7_64Guest"));
    assert_eq!(vm.guest_os.family, OsFamily::Linux);
    assert_eq!(vm.firmware.kind, FirmwareKind::Efi);
    assert_eq!(vm.cpu.count, 2);
    assert_eq!(vm.memory_mib, 1024);
    assert_eq!(vm.disks.len(), 2);
    assert_eq!(vm.disks[0].capacity, Some(9 << 20));
    assert_eq!(vm.disks[1].capacity, Some((3 << 20) + 4096));
    assert_eq!(vm.disks[1].id, "scsi0:1");
    // From the simulator's layoutEx: the descriptor and the flat extent it stats.
    assert!(
        vm.disks[0].populated_size.is_some_and(|p| p >= 9 << 20),
        "{:?}",
        vm.disks[0].populated_size
    );
    assert_eq!(vm.nics[0].model, NicModel::Vmxnet3);
    assert_eq!(vm.nics[0].mac.as_deref(), Some("00:50:56:01:02:03"));
    assert_eq!(vm.nics[0].network.as_deref(), Some("VM Network"));

    let out = tempfile::tempdir().unwrap();
    let progress = Counting {
        last: Mutex::new(Vec::new()),
        resumes: Mutex::new(Vec::new()),
    };
    let outputs = download_vm(&c, "DC0/vm/fixture", out.path(), &progress);
    assert_eq!(*progress.last.lock().unwrap(), [9 << 20, (3 << 20) + 4096]);
    assert!(progress.resumes.lock().unwrap().is_empty());
    for (data, qcow) in disks.iter().zip(&outputs) {
        let raw = out.path().join("src.raw");
        std::fs::write(&raw, data).unwrap();
        qemu_img(&["check", "-f", "qcow2", qcow.to_str().unwrap()]);
        qemu_img(&[
            "compare",
            "-f",
            "raw",
            "-F",
            "qcow2",
            raw.to_str().unwrap(),
            qcow.to_str().unwrap(),
        ]);
        let m = v2k_converters::manifest::Manifest::load(&v2k_converters::manifest::manifest_path(
            qcow,
        ))
        .unwrap();
        assert_eq!(m.hash.source, v2k_converters::blkhash::hash_bytes(data));
        assert!(m.hash.verified);
        assert_eq!(m.source.create_type, "vmfs");
    }
    // Again into the same outputs without overwrite: the converter's refusal is what
    // is reported (not the download it cut short), and the outputs are untouched.
    let vm = get_vm(&c, "DC0/vm/fixture").unwrap();
    let jobs = disk_jobs(&vm, |i| out.path().join(format!("disk{i}.qcow2"))).unwrap();
    let before = std::fs::read(&outputs[0]).unwrap();
    for r in download_and_convert(
        &c,
        &jobs,
        &ConvOptions::default(),
        2,
        &NoDownloadProgress,
        &NoProgress,
    ) {
        let e = r.unwrap_err();
        assert!(e.to_string().contains("output exists"), "{e}");
    }
    assert_eq!(std::fs::read(&outputs[0]).unwrap(), before);
}

#[test]
fn an_interrupted_download_resumes_where_it_stopped() {
    let sim = Vcsim::start();
    let disk = pattern(24 << 20, 3);
    {
        let c = sim.client();
        create_vm(&c, "cut", std::slice::from_ref(&disk));
    }
    // Through a proxy that cuts the first two connections after 5 MiB each.
    let proxy = CuttingProxy::start(sim.port, 5 << 20, 2);
    let mut opts = sim.options();
    opts.port = proxy.port;
    let c = Client::connect(&opts, Vcsim::creds()).unwrap();
    let out = tempfile::tempdir().unwrap();
    let progress = Counting {
        last: Mutex::new(Vec::new()),
        resumes: Mutex::new(Vec::new()),
    };
    let outputs = download_vm(&c, "DC0/vm/cut", out.path(), &progress);
    let resumes = progress.resumes.lock().unwrap().clone();
    assert_eq!(proxy.cut.load(std::sync::atomic::Ordering::SeqCst), 2);
    assert_eq!(resumes.len(), 2, "{resumes:?}");
    // Resumed from the byte it had, not from the start.
    assert!(resumes.iter().all(|&(_, at)| at > 0), "{resumes:?}");
    // Less than twice the disk crossed the proxy: nothing was downloaded again.
    let moved = proxy.bytes.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        moved < disk.len() as u64 + (4 << 20),
        "{moved} bytes for a {}-byte disk",
        disk.len()
    );
    let raw = out.path().join("src.raw");
    std::fs::write(&raw, &disk).unwrap();
    qemu_img(&[
        "compare",
        "-f",
        "raw",
        "-F",
        "qcow2",
        raw.to_str().unwrap(),
        outputs[0].to_str().unwrap(),
    ]);
}

#[test]
fn a_wrong_password_is_invalid_login_and_never_shown() {
    let sim = Vcsim::start();
    let wrong = "not-the-password-42";
    let e = Client::connect(
        &sim.options(),
        v2k_vsphere::Credentials {
            user: USER.into(),
            password: v2k_vsphere::Secret::new(wrong),
        },
    )
    .unwrap_err();
    assert_eq!(e.fault(), Some(&FaultKind::InvalidLogin), "{e}");
    assert!(!format!("{e} {e:?}").contains(wrong));
    // A good login: neither the password nor the session cookie shows in Debug.
    let c = sim.client();
    let key = c.session_key().unwrap();
    let dbg = format!("{c:?}");
    assert!(!dbg.contains(PASSWORD) && !dbg.contains(&key), "{dbg}");
}

#[test]
fn tls_is_verified_by_default_and_a_wrong_thumbprint_is_fatal() {
    let sim = Vcsim::start();
    let pki = pki();
    // Without our CA, the default verification refuses the certificate.
    let mut o = sim.options();
    o.tls = TlsMode::default();
    let e = Client::connect(&o, Vcsim::creds()).unwrap_err();
    assert!(matches!(e, Error::UntrustedCertificate { .. }), "{e}");
    // The right pin connects (no CA needed), a wrong one is fatal.
    o.tls = TlsMode::Pinned(pki.thumbprint);
    Client::connect(&o, Vcsim::creds()).unwrap();
    let mut wrong = pki.thumbprint.0;
    wrong[31] ^= 1;
    o.tls = TlsMode::Pinned(Thumbprint(wrong));
    match Client::connect(&o, Vcsim::creds()).unwrap_err() {
        Error::ThumbprintMismatch { actual, .. } => assert_eq!(actual, pki.thumbprint.to_string()),
        e => panic!("expected a thumbprint mismatch, got {e}"),
    }
    // Insecure connects to anything; the thumbprint command sees the real one.
    o.tls = TlsMode::Insecure;
    Client::connect(&o, Vcsim::creds()).unwrap();
    assert_eq!(
        v2k_vsphere::fetch_thumbprint("127.0.0.1", sim.port).unwrap(),
        pki.thumbprint
    );
}

#[test]
fn an_expired_session_is_renewed_transparently() {
    let sim = Vcsim::start();
    let a = sim.client();
    let key = a.session_key().unwrap();
    // Another session terminates A's behind its back (as an expiry would).
    let admin = sim.client();
    admin
        .terminate_sessions(std::slice::from_ref(&key))
        .unwrap();
    let started = Instant::now();
    let vms = list_vms(&a).unwrap();
    assert_eq!(vms.len(), 4);
    let new_key = a.session_key().unwrap();
    assert_ne!(new_key, key, "a new session was made");
    assert!(started.elapsed() < Duration::from_secs(10));
    drop(a);
    // Dropping the client logged it out: its session is gone.
    let r = admin.call(
        "SessionIsActive",
        &admin.content().unwrap().session_manager,
        &format!("<sessionID>{new_key}</sessionID><userName>{USER}</userName>"),
    );
    if let Ok(r) = r {
        assert_eq!(r.child_text("returnval").map(str::trim), Some("false"));
    }
}

/// A VM with a snapshot: its disk is a delta (sparse, `parentFileNameHint`) over a
/// flat base, as ESXi keeps a VM after "take snapshot". The chain needs random
/// access, so its four files are staged beside the output, consolidated by the file
/// converter into one QCOW2 equal to the chain as qemu reads it, and the staging is
/// removed.
#[test]
fn a_snapshot_chain_is_staged_and_consolidated() {
    let sim = Vcsim::start();
    let c = sim.client();
    let dir = datastore_dir(&sim).join("snap");
    std::fs::create_dir_all(&dir).unwrap();
    let base = dir.join("snap.vmdk");
    let delta = dir.join("snap-000001.vmdk");
    const SIZE: usize = 6 << 20;
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "vmdk",
        "-o",
        "subformat=monolithicFlat",
        base.to_str().unwrap(),
        &SIZE.to_string(),
    ]);
    std::fs::write(dir.join("snap-flat.vmdk"), pattern(SIZE, 31)).unwrap();
    // A relative parent name, as ESXi writes it.
    let o = std::process::Command::new("qemu-img")
        .current_dir(&dir)
        .args([
            "create",
            "-q",
            "-f",
            "vmdk",
            "-o",
            "subformat=twoGbMaxExtentSparse",
            "-b",
            "snap.vmdk",
            "-F",
            "vmdk",
            "snap-000001.vmdk",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = std::process::Command::new("qemu-io")
        .args([
            "-f",
            "vmdk",
            "-c",
            "write -P 0x5a 1M 192k",
            "-c",
            "write -z 4M 64k",
        ])
        .arg(&delta)
        .output()
        .expect("missing prerequisite: qemu-io (package qemu-utils)");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // vcsim only attaches a disk whose `NAME-flat.vmdk` exists (its VirtualDiskManager
    // assumes flat disks); an empty one satisfies it and is never read.
    std::fs::write(dir.join("snap-000001-flat.vmdk"), b"").unwrap();
    create_vm_with_disks(
        &c,
        "snapped",
        &[("[LocalDS_0] snap/snap-000001.vmdk".into(), SIZE as u64)],
        "00:50:56:01:02:09",
    );

    let vm = get_vm(&c, "DC0/vm/snapped").unwrap();
    let out = tempfile::tempdir().unwrap();
    let jobs = disk_jobs(&vm, |i| out.path().join(format!("d{i}.qcow2"))).unwrap();
    let progress = Counting {
        last: Mutex::new(Vec::new()),
        resumes: Mutex::new(Vec::new()),
    };
    let m = download_and_convert(
        &c,
        &jobs,
        &ConvOptions::default(),
        2,
        &progress,
        &NoProgress,
    )
    .into_iter()
    .next()
    .unwrap()
    .expect("a staged snapshot chain converts");
    assert!(m.hash.verified);
    let q = jobs[0].output.to_str().unwrap();
    qemu_img(&["check", "-f", "qcow2", q]);
    qemu_img(&[
        "compare",
        "-f",
        "vmdk",
        "-F",
        "qcow2",
        delta.to_str().unwrap(),
        q,
    ]);
    // Progress was reported for the staged files, under the job's own index.
    assert_eq!(progress.last.lock().unwrap().len(), 1);
    let left: Vec<_> = std::fs::read_dir(out.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        left.iter().all(|n| !n.contains("v2k-staging")),
        "staging removed: {left:?}"
    );

    // A parent that is not beside its child (a linked clone) is refused by name.
    let text = std::fs::read_to_string(&delta).unwrap();
    std::fs::write(
        &delta,
        text.replace(
            "parentFileNameHint=\"snap.vmdk\"",
            "parentFileNameHint=\"../base/snap.vmdk\"",
        ),
    )
    .unwrap();
    let e = download_and_convert(
        &c,
        &jobs,
        &ConvOptions {
            overwrite: true,
            ..ConvOptions::default()
        },
        2,
        &NoDownloadProgress,
        &NoProgress,
    )
    .into_iter()
    .next()
    .unwrap()
    .unwrap_err();
    assert!(e.to_string().contains("linked clones"), "{e}");
}

/// Records every progress event in arrival order.
struct Sequence(Mutex<Vec<(usize, u64)>>);

impl DownloadProgress for Sequence {
    fn progress(&self, disk: usize, done: u64, _total: u64, _rate: f64) {
        self.0.lock().unwrap().push((disk, done));
    }
}

#[test]
fn the_per_host_limit_bounds_concurrent_downloads() {
    let sim = Vcsim::start();
    let c = sim.client();
    let disks = vec![pattern(40 << 20, 5), pattern(40 << 20, 6)];
    create_vm(&c, "limited", &disks);
    let vm = get_vm(&c, "DC0/vm/limited").unwrap();
    let out = tempfile::tempdir().unwrap();
    let jobs = disk_jobs(&vm, |i| out.path().join(format!("d{i}.qcow2"))).unwrap();
    assert!(jobs
        .iter()
        .all(|j| j.source.host.as_deref() == Some("DC0_H0")));
    let seq = Sequence(Mutex::new(Vec::new()));
    for r in download_and_convert(&c, &jobs, &ConvOptions::default(), 1, &seq, &NoProgress) {
        r.unwrap();
    }
    // One at a time from this host: every event of one disk before any of the other.
    let events = seq.0.into_inner().unwrap();
    let first = events[0].0;
    let switch = events.iter().position(|e| e.0 != first).unwrap();
    assert!(events[switch..].iter().all(|e| e.0 != first), "{events:?}");
    assert_eq!(events[switch - 1].1, 40 << 20, "{events:?}");
    assert!(events.len() >= 6, "progress every 16 MiB: {events:?}");
}
