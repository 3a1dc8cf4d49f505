//! Live against cold downtime for the same VM (`scripts/bench-live.sh --downtime`,
//! issue 19): a fixture guest made a VM of VMware's simulator twice per shape, one
//! copy migrated cold (`v2k migrate --cutover --to qemu:///system --pool P --start`:
//! copied, converted, validated, delivered, started and judged there) and one live
//! (`v2k migrate --live`), each from a running source; both reports' `downtime`
//! (one definition: the source found off → the agent's report on the target) and
//! the copy and stream rates are printed with their ratios. Shapes: `classic`, the
//! debian-classic fixture as it is; `data8g`, the same plus an 8 GiB data disk
//! holding 1 GiB of pseudo-random data in 16 runs of 64 MiB, one every 512 MiB.
//!
//! A measurement, not a test: it boots guests (TCG here), needs the fixture cache,
//! vcsim's prerequisites and a running libvirtd, and exits non-zero when a run gives
//! no downtime. Every VM, domain and pool is named with this process's id and removed
//! at the end. `V2K` names the binary to measure.

#[path = "../../vsphere/tests/common/mod.rs"]
mod common;
#[path = "../tests/support/libvirt.rs"]
mod libvirt;
// Shared with the tests: this bench uses only its disk copy.
#[allow(dead_code)]
#[path = "../tests/support/vcsim_fixture.rs"]
mod vcsim_fixture;

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use common::*;
use libvirt::{virsh, virsh_ok};
use serde_json::Value;
use v2k_fixtures::{build, Fixture, Variant};
use vcsim_fixture::fixture_disks;

/// The data disk of the `data8g` shape.
const DATA_SIZE: u64 = 8 << 30;
const DATA_RUN: u64 = 64 << 20;
const DATA_EVERY: u64 = 512 << 20;

/// What this run made in libvirt, removed on drop.
struct Cleanup {
    domains: Vec<String>,
    pools: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for d in &self.domains {
            let _ = virsh(&["destroy", d]);
            let _ = virsh(&["undefine", d, "--nvram"]);
        }
        for p in &self.pools {
            let _ = virsh(&["pool-destroy", p]);
        }
    }
}

/// The fixture's ESXi-style disks copied into the datastore under `dir` (sparse), plus
/// the data disk for `data8g`; the VM `name` made around them. The disks' sizes.
fn make_vm(sim: &Vcsim, f: &Fixture, dir: &str, name: &str, data: bool) -> Vec<u64> {
    let ds = datastore_dir(sim).join(dir);
    let mut disks = fixture_disks(sim, f, dir);
    if data {
        std::fs::write(
            ds.join("data.vmdk"),
            format!(
                "# Disk DescriptorFile\nversion=1\nencoding=\"UTF-8\"\nCID=5e2a11c7\n\
                 parentCID=ffffffff\ncreateType=\"vmfs\"\n\n# Extent description\n\
                 RW {} VMFS \"data-flat.vmdk\"\n\n# The Disk Data Base\n#DDB\n\n\
                 ddb.adapterType = \"lsilogic\"\nddb.thinProvisioned = \"1\"\n\
                 ddb.virtualHWVersion = \"19\"\n",
                DATA_SIZE / 512
            ),
        )
        .unwrap();
        let mut flat = std::fs::File::create(ds.join("data-flat.vmdk")).unwrap();
        flat.set_len(DATA_SIZE).unwrap();
        let mut at = 0;
        let mut seed = 1;
        while at < DATA_SIZE {
            flat.seek(SeekFrom::Start(at)).unwrap();
            flat.write_all(&pattern(DATA_RUN as usize, seed)).unwrap();
            at += DATA_EVERY;
            seed += 1;
        }
        flat.sync_all().unwrap();
        disks.push((format!("[LocalDS_0] {dir}/data.vmdk"), DATA_SIZE));
    }
    create_vm_with_disks(&sim.client(), name, &disks, &f.mac);
    disks.iter().map(|d| d.1).collect()
}

fn address(sim: &Vcsim, vm: &str) -> String {
    format!(
        "vsphere://{}@127.0.0.1:{}/DC0/vm/{vm}",
        USER.replace('@', "%40"),
        sim.port
    )
}

/// `v2k migrate ADDRESS --out OUT ARGS`; the report, or a panic naming why not.
fn migrate(v2k: &Path, sim: &Vcsim, vm: &str, out: &Path, args: &[&str]) -> (Value, f64) {
    let t = Instant::now();
    let o = Command::new(v2k)
        .arg("migrate")
        .arg(address(sim, vm))
        .arg("--out")
        .arg(out)
        .arg("--ca-file")
        .arg(&pki().ca)
        .args(["--shutdown-timeout", "120"])
        .args(args)
        .env("V2K_VSPHERE_PASSWORD", PASSWORD)
        .output()
        .unwrap();
    let wall = t.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&o.stderr);
    let r: Value = match std::fs::read(out.join("report.json")) {
        Ok(b) => serde_json::from_slice(&b).unwrap(),
        Err(_) => panic!("{vm}: no report (exit {:?}):\n{stderr}", o.status.code()),
    };
    // What failed, if anything: the figures stand either way (the downtime ends with
    // the agent's report, whatever the checks say), but a reader should know.
    let failed: Vec<String> = ["validation", "after-cutover"]
        .iter()
        .flat_map(|k| r[*k]["checks"].as_array().cloned().unwrap_or_default())
        .filter(|c| c["passed"] == false)
        .map(|c| {
            format!(
                "{}: {}",
                c["id"].as_str().unwrap_or("?"),
                c["reason"].as_str().unwrap_or("")
            )
        })
        .collect();
    eprintln!(
        "bench-live: {vm}: exit {:?}, {wall:.1} s wall, result {}; failed checks: {failed:?}",
        o.status.code(),
        r["result"]
    );
    (r, wall)
}

fn stage(r: &Value, name: &str) -> f64 {
    r["stages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["name"] == name)
        .map(|s| s["seconds"].as_f64().unwrap_or(0.0))
        .sum()
}

fn stages(r: &Value) -> String {
    r["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            format!(
                "{} {:.1}",
                s["name"].as_str().unwrap_or("?"),
                s["seconds"].as_f64().unwrap_or(0.0)
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn downtime(r: &Value, vm: &str) -> f64 {
    r["downtime"]["seconds"]
        .as_f64()
        .unwrap_or_else(|| panic!("{vm}: no downtime measured: {:#}", r["downtime"]))
}

fn main() {
    let v2k = PathBuf::from(std::env::var_os("V2K").expect("V2K: the v2k binary to measure"));
    let shapes: Vec<String> = std::env::args().skip(1).collect();
    let shapes = if shapes.is_empty() {
        vec!["classic".to_string(), "data8g".to_string()]
    } else {
        shapes
    };
    let f = build(Variant::DebianClassic).expect("building the debian-classic fixture");
    let sim = Vcsim::start();
    let c = sim.client();
    let id = std::process::id();
    let work = tempfile::Builder::new()
        .prefix("v2k-bench-live-")
        .tempdir_in("/var/tmp")
        .unwrap();
    // libvirt's QEMU user passes through (search only) to the live sockets and overlays.
    std::fs::set_permissions(
        work.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o711),
    )
    .unwrap();
    let mut clean = Cleanup {
        domains: Vec::new(),
        pools: Vec::new(),
    };
    let mut rows = Vec::new();
    for shape in &shapes {
        let data = match shape.as_str() {
            "classic" => false,
            "data8g" => true,
            s => panic!("unknown shape {s} (classic, data8g)"),
        };
        let (cold_vm, live_vm) = (
            format!("v2kb{id}-{shape}-cold"),
            format!("v2kb{id}-{shape}-live"),
        );
        let sizes = make_vm(&sim, &f, &format!("{shape}-cold"), &cold_vm, data);
        make_vm(&sim, &f, &format!("{shape}-live"), &live_vm, data);
        let virtual_mib = sizes.iter().sum::<u64>() as f64 / (1 << 20) as f64;
        clean.domains.push(cold_vm.clone());
        clean.domains.push(live_vm.clone());

        // Cold: copied and converted, validated here, delivered, started and judged
        // on the destination (its agent's report ends the downtime).
        power_on(&c, &cold_vm);
        let pool = format!("{cold_vm}-pool");
        let pool_dir = work.path().join(&pool);
        std::fs::create_dir(&pool_dir).unwrap();
        virsh_ok(&[
            "pool-create-as",
            &pool,
            "dir",
            "--target",
            &pool_dir.to_string_lossy(),
        ]);
        clean.pools.push(pool.clone());
        let (cold, cold_wall) = migrate(
            &v2k,
            &sim,
            &cold_vm,
            &work.path().join(&cold_vm),
            &[
                "--cutover",
                "--to",
                "qemu:///system",
                "--pool",
                &pool,
                "--start",
            ],
        );
        let _ = virsh(&["destroy", &cold_vm]);
        // Live: started on overlays over v2k's NBD server, streamed behind it.
        power_on(&c, &live_vm);
        let (live, live_wall) = migrate(
            &v2k,
            &sim,
            &live_vm,
            &work.path().join(&live_vm),
            &["--live"],
        );
        let _ = virsh(&["destroy", &live_vm]);

        let cold_down = downtime(&cold, &cold_vm);
        let live_down = downtime(&live, &live_vm);
        let validate = stage(&cold, "validate");
        let convert = stage(&cold, "convert");
        let copy_rate = virtual_mib / convert.max(0.001);
        let stream_rate = live["live"]["stream-mib-per-second"]
            .as_f64()
            .unwrap_or(0.0);
        println!(
            "{shape}: {} disk(s), {virtual_mib:.0} MiB virtual",
            sizes.len()
        );
        println!(
            "  cold: downtime {cold_down:.1} s (of which the validation boot {validate:.1} s), {cold_wall:.1} s wall; convert {convert:.1} s = {copy_rate:.0} MiB/s of virtual size"
        );
        println!("        stages: {}", stages(&cold));
        println!(
            "  live: downtime {live_down:.1} s, {live_wall:.1} s wall; stream {:.1} s = {stream_rate:.0} MiB/s of virtual size; verdict {}",
            live["live"]["stream-seconds"].as_f64().unwrap_or(0.0),
            live["live"]["verdict"]
        );
        println!("        stages: {}", stages(&live));
        println!(
            "  ratios: live/cold downtime {:.2} (against cold without its validation boot {:.2}); stream/cold copy rate {:.2}",
            live_down / cold_down,
            live_down / (cold_down - validate).max(0.001),
            stream_rate / copy_rate.max(0.001)
        );
        rows.push((shape.clone(), cold_down, live_down));
    }
    println!("shape\tcold s\tlive s\tlive/cold");
    for (s, cd, ld) in rows {
        println!("{s}\t{cd:.1}\t{ld:.1}\t{:.2}", ld / cd);
    }
}
