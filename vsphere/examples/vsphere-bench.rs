//! Download-and-convert of one datastore disk, timed: the v2k side of
//! scripts/bench-vsphere.sh (which times a plain `curl` of the same extent beside it).
//!
//! Usage: `V2K_VSPHERE_PASSWORD=... vsphere-bench HOST PORT USER CA_PEM '[ds] dir/disk.vmdk' DATACENTER OUT.qcow2`
//! Prints one line: `seconds=S bytes=N mib_per_s=R`.

use std::path::PathBuf;
use std::time::Instant;

use v2k_converters::convert::{NoProgress, Options as ConvOptions};
use v2k_vsphere::convert::{download_and_convert, DiskJob};
use v2k_vsphere::datastore::{DatastorePath, DiskSource, NoDownloadProgress};
use v2k_vsphere::{Client, Credentials, Options, Secret, TlsMode};

fn main() {
    let a: Vec<String> = std::env::args().collect();
    if a.len() != 8 {
        eprintln!(
            "usage: vsphere-bench HOST PORT USER CA_PEM '[ds] path.vmdk' DATACENTER OUT.qcow2"
        );
        std::process::exit(2);
    }
    let password = std::env::var("V2K_VSPHERE_PASSWORD").unwrap_or_else(|_| {
        eprintln!("V2K_VSPHERE_PASSWORD is not set");
        std::process::exit(2)
    });
    let opts = Options {
        host: a[1].clone(),
        port: a[2].parse().expect("port"),
        tls: TlsMode::Verify {
            extra_ca: Some(PathBuf::from(&a[4])),
        },
    };
    let client = Client::connect(
        &opts,
        Credentials {
            user: a[3].clone(),
            password: Secret::new(password),
        },
    )
    .unwrap_or_else(|e| {
        eprintln!("connecting: {e}");
        std::process::exit(1)
    });
    let job = DiskJob {
        source: DiskSource {
            descriptor: DatastorePath::parse(&a[5]).expect("datastore path"),
            datacenter: a[6].clone(),
            host: None,
        },
        output: PathBuf::from(&a[7]),
    };
    let conv = ConvOptions {
        overwrite: true,
        ..ConvOptions::default()
    };
    let t = Instant::now();
    let r = download_and_convert(&client, &[job], &conv, 1, &NoDownloadProgress, &NoProgress);
    let secs = t.elapsed().as_secs_f64();
    match &r[0] {
        Ok(m) => {
            let n = m.source.virtual_size;
            println!(
                "seconds={secs:.3} bytes={n} mib_per_s={:.1} copy_seconds={:.3} verify_seconds={:.3}",
                n as f64 / 1048576.0 / secs,
                m.timing.copy_seconds,
                m.timing.verify_seconds
            );
        }
        Err(e) => {
            eprintln!("download and convert: {e}");
            std::process::exit(1);
        }
    }
}
