//! The NBD server over a disk on the vCenter simulator's datastore, read with HTTP
//! Range requests: served bytes equal the source (TLS pinned by thumbprint); behind a
//! test proxy that enforces the session cookie on `/folder` as ESXi does (vcsim does
//! not), a session expired mid-read is renewed once for all reads in flight (the
//! logins are counted: not one per request); the proxy stopped and restarted mid-read
//! holds the reads, which then complete identically; an outage longer than the hold
//! time fails with an error that names the file and holds no password or cookie; a
//! body cut short is retried and a `Content-Range` other than the one asked is refused.
//! Each test runs its own simulator (own TMPDIR) and names its disk with its own id.

#[path = "../../vsphere/tests/common/mod.rs"]
mod common;
#[path = "support/session_proxy.rs"]
mod session_proxy;

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use v2k_live::{serve, DatastoreSource, RetryPolicy, ServeOptions, Source};
use v2k_vsphere::{DiskSource, Options, TlsMode};

use common::{pattern, put_flat_disk, Vcsim, PASSWORD};
use session_proxy::{go_down, Faults, SessionProxy};

/// A unique disk name for this test.
fn unique(test: &str) -> String {
    format!("live-{test}-{}", std::process::id())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Serves `source` and has `qemu-img compare` check every byte against `local`
/// (several requests in flight: qemu-img reads ahead); returns the server's stats.
fn serve_and_compare(
    rt: &tokio::runtime::Runtime,
    source: Arc<DatastoreSource>,
    local: &std::path::Path,
    dir: &std::path::Path,
) -> v2k_live::Stats {
    let sock = dir.join("nbd.sock");
    let server = rt
        .block_on(serve(source, &sock, ServeOptions::default()))
        .unwrap();
    let uri = format!("nbd+unix:///disk?socket={}", sock.display());
    let out = dir.join("copy.raw");
    let o = Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "raw", "-m", "8", "-W", &uri])
        .arg(&out)
        .output()
        .expect("missing prerequisite: qemu-img (package qemu-utils)");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        std::fs::read(&out).unwrap() == std::fs::read(local).unwrap(),
        "served bytes differ from the source"
    );
    let rec = server.record();
    assert_eq!(rec.hashes.len() as u64, rec.clusters());
    rt.block_on(server.shutdown())
}

#[test]
fn a_datastore_disk_is_served_byte_for_byte_with_the_certificate_pinned() {
    let sim = Vcsim::start();
    let name = unique("pinned");
    let data = pattern((20 << 20) + 38_400, 3);
    let disk = put_flat_disk(&sim, &name, &data);
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("source.raw");
    std::fs::write(&local, &data).unwrap();
    let rt = runtime();
    let opts = Options {
        tls: TlsMode::Pinned(common::pki().thumbprint),
        ..sim.options()
    };
    let src = rt
        .block_on(DatastoreSource::connect(
            &opts,
            Vcsim::creds(),
            &disk,
            RetryPolicy::default(),
        ))
        .unwrap();
    assert_eq!(src.size(), data.len() as u64);
    assert_eq!(src.name(), format!("[LocalDS_0] {name}/{name}-flat.vmdk"));
    let st = serve_and_compare(&rt, Arc::new(src), &local, dir.path());
    assert_eq!(st.bytes_served, data.len() as u64);
    assert_eq!((st.source.logins, st.source.retries), (1, 0));

    // A wrong pin is fatal, before anything is read.
    let wrong = Options {
        tls: TlsMode::Pinned(v2k_vsphere::Thumbprint::parse(&"ab".repeat(32)).unwrap()),
        ..sim.options()
    };
    let e = rt
        .block_on(DatastoreSource::connect(
            &wrong,
            Vcsim::creds(),
            &disk,
            RetryPolicy::default(),
        ))
        .err()
        .expect("a wrong thumbprint must fail");
    assert!(e.to_string().contains("thumbprint"), "{e}");
}

/// The disk, a local copy of its bytes, a scratch directory.
fn setup(sim: &Vcsim, test: &str, size: usize) -> (DiskSource, PathBuf, tempfile::TempDir) {
    let data = pattern(size, 11);
    let disk = put_flat_disk(sim, &unique(test), &data);
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("source.raw");
    std::fs::write(&local, &data).unwrap();
    (disk, local, dir)
}

#[test]
fn a_session_expired_mid_read_is_renewed_once_for_all_reads_in_flight() {
    let sim = Vcsim::start();
    let (disk, local, dir) = setup(&sim, "expiry", 48 << 20);
    // /folder requests 1 and 2 are the descriptor and the size probe; the sessions
    // expire at the 8th, with reads in flight.
    let proxy = SessionProxy::start(
        sim.port,
        Faults {
            expire_at: 8,
            ..Faults::default()
        },
    );
    let rt = runtime();
    let src = rt
        .block_on(DatastoreSource::connect(
            &proxy.options(),
            Vcsim::creds(),
            &disk,
            RetryPolicy::default(),
        ))
        .unwrap();
    let st = serve_and_compare(&rt, Arc::new(src), &local, dir.path());
    let refused = proxy.st.refused.load(Ordering::SeqCst);
    eprintln!("{st:?}, refused by the proxy: {refused}");
    assert!(refused >= 1, "the proxy never refused a read");
    // One login at connect, one renewal: not one per refused or later request.
    assert_eq!(proxy.st.logins.load(Ordering::SeqCst), 2);
    assert_eq!(st.source.logins, 2);
    assert!(proxy.st.folder.load(Ordering::SeqCst) > 20);
}

#[test]
fn an_outage_mid_read_holds_the_reads_until_the_datastore_is_back() {
    let sim = Vcsim::start();
    let (disk, local, dir) = setup(&sim, "outage", 48 << 20);
    let proxy = SessionProxy::start(
        sim.port,
        Faults {
            outage_at: 10,
            outage: Some(Duration::from_secs(3)),
            ..Faults::default()
        },
    );
    let rt = runtime();
    let policy = RetryPolicy {
        hold: Duration::from_secs(120),
        first_delay: Duration::from_millis(100),
        max_delay: Duration::from_secs(1),
    };
    let src = rt
        .block_on(DatastoreSource::connect(
            &proxy.options(),
            Vcsim::creds(),
            &disk,
            policy,
        ))
        .unwrap();
    let st = serve_and_compare(&rt, Arc::new(src), &local, dir.path());
    eprintln!("{st:?}");
    assert!(st.source.retries >= 1, "{st:?}");
    assert_eq!(st.source.logins, 1);
    assert_eq!(st.errors, 0);
}

#[test]
fn an_outage_past_the_hold_time_fails_naming_the_file_without_secrets() {
    let sim = Vcsim::start();
    let (disk, _local, _dir) = setup(&sim, "gone", 1 << 20);
    let proxy = SessionProxy::start(sim.port, Faults::default());
    let rt = runtime();
    let policy = RetryPolicy {
        hold: Duration::from_secs(1),
        first_delay: Duration::from_millis(100),
        max_delay: Duration::from_millis(200),
    };
    let src = rt
        .block_on(DatastoreSource::connect(
            &proxy.options(),
            Vcsim::creds(),
            &disk,
            policy,
        ))
        .unwrap();
    go_down(&proxy.st, None);
    let e = rt.block_on(src.read_at(0, 65536)).unwrap_err();
    let mut text = format!("{e} {e:?}");
    let mut cause: Option<&dyn std::error::Error> = std::error::Error::source(&e);
    while let Some(c) = cause {
        text.push_str(&format!(" {c} {c:?}"));
        cause = c.source();
    }
    assert!(matches!(e, v2k_live::Error::Unavailable { .. }), "{text}");
    assert!(
        text.contains(&format!("{}-flat.vmdk", unique("gone"))),
        "{text}"
    );
    assert!(!text.contains(PASSWORD), "{text}");
    let cookies = proxy.cookies();
    assert!(!cookies.is_empty());
    for c in cookies {
        let value = c.split_once('=').unwrap().1.trim_matches('"');
        assert!(!text.contains(value), "the session cookie is in: {text}");
    }
    assert!(src.stats().retries >= 1);
}

#[test]
fn a_cut_body_is_retried_and_a_wrong_range_is_refused() {
    let sim = Vcsim::start();
    let (disk, local, _dir) = setup(&sim, "tamper", 1 << 20);
    // /folder requests: 1 descriptor, 2 size probe, 3 the first read (cut in half),
    // 4 its retry (a Content-Range that is not the one asked for), 5 a clean read.
    let proxy = SessionProxy::start(
        sim.port,
        Faults {
            truncate_at: 3,
            wrong_range_at: 4,
            ..Faults::default()
        },
    );
    let rt = runtime();
    let src = rt
        .block_on(DatastoreSource::connect(
            &proxy.options(),
            Vcsim::creds(),
            &disk,
            RetryPolicy {
                first_delay: Duration::from_millis(50),
                ..RetryPolicy::default()
            },
        ))
        .unwrap();
    let e = rt.block_on(src.read_at(0, 128 << 10)).unwrap_err();
    assert!(e.to_string().contains("asked for bytes 0-131071"), "{e}");
    assert_eq!(src.stats().retries, 1);
    let got = rt.block_on(src.read_at(0, 128 << 10)).unwrap();
    assert_eq!(got, std::fs::read(&local).unwrap()[..128 << 10]);
}
