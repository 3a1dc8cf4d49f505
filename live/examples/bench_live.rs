//! The measurement behind scripts/bench-live.sh: the same disk on the vCenter
//! simulator's datastore read three ways, each timed from first request to last
//! byte: (1) v2k's NBD server, read by `qemu-img convert`; (2) nbdkit's curl plugin
//! (when installed), read the same way; (3) v2k's cold-path download
//! (`Client::stream_disks`, one streamed GET, into a sink). `qemu-img convert` writes
//! to QEMU's null driver so that no target disk is timed. Prints one line per run and
//! the ratios of the medians. A measurement, not a test: it asserts only that v2k's
//! server served the right bytes (a benchmark of a wrong result is worthless).
//!
//! `cargo run --release -p v2k-live --example bench_live -- [SIZE_MIB] [RUNS]`

#[path = "../../vsphere/tests/common/mod.rs"]
mod common;

use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use v2k_live::{serve, DatastoreSource, RetryPolicy, ServeOptions};
use v2k_vsphere::datastore::NoDownloadProgress;
use v2k_vsphere::{DatastorePath, DiskSource};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Seconds `qemu-img convert` takes to read `uri` whole into the null driver.
fn qemu_read(uri: &str, size: u64) -> f64 {
    let t = Instant::now();
    let o = Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-n", "-W", "-m", "8", uri])
        .args([
            "--target-image-opts",
            &format!("driver=null-co,size={size}"),
        ])
        .output()
        .expect("qemu-img");
    assert!(
        o.status.success(),
        "qemu-img: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    t.elapsed().as_secs_f64()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mib: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(1024);
    let runs: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(3);
    let size = mib << 20;
    let sim = common::Vcsim::start();
    let name = format!("bench-live-{}", std::process::id());
    let dir = common::datastore_dir(&sim).join(&name);
    std::fs::create_dir_all(&dir).unwrap();
    let data = common::pattern(size as usize, 5);
    std::fs::write(dir.join(format!("{name}-flat.vmdk")), &data).unwrap();
    std::fs::write(
        dir.join(format!("{name}.vmdk")),
        format!(
            "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n\
             createType=\"vmfs\"\n\n# Extent description\nRW {} VMFS \"{name}-flat.vmdk\"\n",
            size / 512
        ),
    )
    .unwrap();
    let disk = DiskSource {
        descriptor: DatastorePath::parse(&format!("[LocalDS_0] {name}/{name}.vmdk")).unwrap(),
        datacenter: "DC0".into(),
        host: None,
    };
    let scratch = tempfile::tempdir().unwrap();
    let nbdkit = Command::new("nbdkit")
        .args(["curl", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    println!(
        "disk: {mib} MiB on vcsim; runs: {runs}; nbdkit curl plugin: {}",
        if nbdkit { "installed" } else { "NOT INSTALLED" }
    );
    let (mut v2k, mut curl, mut cold) = (Vec::new(), Vec::new(), Vec::new());
    let client = sim.client();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    // v2k's server, a fresh source and server (cold cache) each time.
    let start = |sock: &std::path::Path| {
        let src = rt
            .block_on(DatastoreSource::connect(
                &sim.options(),
                common::Vcsim::creds(),
                &disk,
                RetryPolicy::default(),
            ))
            .unwrap();
        rt.block_on(serve(Arc::new(src), sock, ServeOptions::default()))
            .unwrap()
    };
    {
        // Correctness once, untimed.
        let sock = scratch.path().join("check.sock");
        let server = start(&sock);
        let o = Command::new("qemu-img")
            .args(["compare", "-f", "raw", "-F", "raw"])
            .arg(format!("nbd+unix:///disk?socket={}", sock.display()))
            .arg(dir.join(format!("{name}-flat.vmdk")))
            .output()
            .unwrap();
        assert!(o.status.success(), "served bytes differ from the source");
        rt.block_on(server.shutdown());
    }
    for run in 0..runs {
        let sock = scratch.path().join(format!("v2k-{run}.sock"));
        let server = start(&sock);
        let t = qemu_read(&format!("nbd+unix:///disk?socket={}", sock.display()), size);
        rt.block_on(server.shutdown());
        v2k.push(t);
        println!("run {run} v2k-nbd  {:7.2} s", v2k[run]);

        if nbdkit {
            let sock = scratch.path().join(format!("nbdkit-{run}.sock"));
            let url = format!(
                "https://127.0.0.1:{}/folder/{name}/{name}-flat.vmdk?dcPath=DC0&dsName=LocalDS_0",
                sim.port
            );
            let mut child = Command::new("nbdkit")
                .args(["-f", "-r", "-U"])
                .arg(&sock)
                .arg("curl")
                .arg(format!("url={url}"))
                .arg(format!("cainfo={}", common::pki().ca.display()))
                .spawn()
                .expect("nbdkit");
            while !sock.exists() {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            let t = qemu_read(&format!("nbd+unix:///?socket={}", sock.display()), size);
            let _ = child.kill();
            let _ = child.wait();
            curl.push(t);
            println!("run {run} nbdkit   {t:7.2} s");
        }

        let t = Instant::now();
        let r = client.stream_disks(
            std::slice::from_ref(&disk),
            1,
            &NoDownloadProgress,
            |_, _, reader| {
                std::io::copy(reader, &mut std::io::sink()).unwrap();
                Ok(())
            },
        );
        assert!(r.into_iter().all(|r| r.is_ok()), "cold download failed");
        let t = t.elapsed().as_secs_f64();
        cold.push(t);
        println!("run {run} cold-get {t:7.2} s");
    }
    let mb = size as f64 / 1048576.0;
    let (v, c) = (median(v2k), median(cold));
    println!("median v2k-nbd  {v:7.2} s  {:7.1} MiB/s", mb / v);
    println!("median cold-get {c:7.2} s  {:7.1} MiB/s", mb / c);
    println!("ratio v2k-nbd throughput / cold download = {:.2}", c / v);
    if !curl.is_empty() {
        let n = median(curl);
        println!("median nbdkit   {n:7.2} s  {:7.1} MiB/s", mb / n);
        println!("ratio v2k-nbd throughput / nbdkit curl = {:.2}", n / v);
    }
}
