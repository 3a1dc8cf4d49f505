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

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use v2k_live::{serve, DatastoreSource, RetryPolicy, ServeOptions, Source};
use v2k_vsphere::{DatastorePath, DiskSource, Options, TlsMode};

use common::{datastore_dir, pattern, Vcsim, PASSWORD};

/// A unique disk name for this test.
fn unique(test: &str) -> String {
    format!("live-{test}-{}", std::process::id())
}

/// Writes a flat disk (descriptor + extent, as ESXi lays them out) into the
/// simulator's datastore and returns how to find it.
fn put_flat_disk(sim: &Vcsim, name: &str, data: &[u8]) -> DiskSource {
    let dir = datastore_dir(sim).join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("{name}-flat.vmdk")), data).unwrap();
    let desc = format!(
        "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n\
         createType=\"vmfs\"\n\n# Extent description\nRW {} VMFS \"{name}-flat.vmdk\"\n\n\
         ddb.adapterType = \"pvscsi\"\n",
        data.len() / 512
    );
    std::fs::write(dir.join(format!("{name}.vmdk")), desc).unwrap();
    DiskSource {
        descriptor: DatastorePath::parse(&format!("[LocalDS_0] {name}/{name}.vmdk")).unwrap(),
        datacenter: "DC0".into(),
        host: None,
    }
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

/// What the proxy does to `/folder` requests, by their 1-based number.
#[derive(Default)]
struct Faults {
    /// Sessions expire just before this request (0: never).
    expire_at: usize,
    /// The proxy goes down at this request (0: never), for `outage`, or for good.
    outage_at: usize,
    outage: Option<Duration>,
    /// This response's body is cut in half (the connection drops).
    truncate_at: usize,
    /// This response claims a range starting 512 bytes later than asked.
    wrong_range_at: usize,
}

/// An HTTPS proxy in front of the simulator, with its certificate, that checks the
/// session cookie on `/folder` like ESXi (401 without a live session), records the
/// sessions that Login creates, and injects the faults.
struct SessionProxy {
    port: u16,
    st: Arc<ProxyState>,
}

struct ProxyState {
    upstream: u16,
    faults: Faults,
    sessions: Mutex<HashSet<String>>,
    logins: AtomicUsize,
    folder: AtomicUsize,
    refused: AtomicUsize,
    down: AtomicBool,
    gone: AtomicBool,
    conns: Mutex<Vec<TcpStream>>,
}

impl SessionProxy {
    fn start(upstream: u16, faults: Faults) -> SessionProxy {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let st = Arc::new(ProxyState {
            upstream,
            faults,
            sessions: Mutex::new(HashSet::new()),
            logins: AtomicUsize::new(0),
            folder: AtomicUsize::new(0),
            refused: AtomicUsize::new(0),
            down: AtomicBool::new(false),
            gone: AtomicBool::new(false),
            conns: Mutex::new(Vec::new()),
        });
        let pki = common::pki();
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&pki.cert)
            .unwrap()
            .map(|c| c.unwrap())
            .collect();
        let key = PrivateKeyDer::from_pem_file(&pki.key).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server_cfg = Arc::new(
            rustls::ServerConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(certs, key)
                .unwrap(),
        );
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(&pki.ca).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let client_cfg = Arc::new(
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        );
        let st2 = st.clone();
        std::thread::spawn(move || {
            let mut listener = Some(l);
            loop {
                if st2.gone.load(Ordering::SeqCst) && st2.down.load(Ordering::SeqCst) {
                    return;
                }
                if st2.down.load(Ordering::SeqCst) {
                    // Down: nothing listens, connections are refused.
                    listener = None;
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
                let l = listener.get_or_insert_with(|| {
                    TcpListener::bind(("127.0.0.1", port)).expect("re-binding the proxy port")
                });
                l.set_nonblocking(true).unwrap();
                match l.accept() {
                    Ok((tcp, _)) => {
                        tcp.set_nonblocking(false).unwrap();
                        st2.conns.lock().unwrap().push(tcp.try_clone().unwrap());
                        let (st3, sc, cc) = (st2.clone(), server_cfg.clone(), client_cfg.clone());
                        std::thread::spawn(move || handle(&st3, tcp, sc, cc));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        SessionProxy { port, st }
    }

    fn options(&self) -> Options {
        Options {
            host: "127.0.0.1".into(),
            port: self.port,
            tls: TlsMode::Verify {
                extra_ca: Some(common::pki().ca.clone()),
            },
        }
    }

    /// Every session cookie the simulator handed out through the proxy.
    fn cookies(&self) -> Vec<String> {
        self.st.sessions.lock().unwrap().iter().cloned().collect()
    }
}

impl Drop for SessionProxy {
    fn drop(&mut self) {
        self.st.gone.store(true, Ordering::SeqCst);
        self.st.down.store(true, Ordering::SeqCst);
    }
}

/// Cuts every open connection and stops listening, for `d` (or for good).
fn go_down(st: &Arc<ProxyState>, d: Option<Duration>) {
    st.down.store(true, Ordering::SeqCst);
    for c in st.conns.lock().unwrap().drain(..) {
        let _ = c.shutdown(Shutdown::Both);
    }
    if let Some(d) = d {
        let st = st.clone();
        std::thread::spawn(move || {
            std::thread::sleep(d);
            st.down.store(false, Ordering::SeqCst);
        });
    }
}

/// One request per connection (every response says `Connection: close`).
fn handle(
    st: &Arc<ProxyState>,
    tcp: TcpStream,
    server_cfg: Arc<rustls::ServerConfig>,
    client_cfg: Arc<rustls::ClientConfig>,
) {
    let conn = rustls::ServerConnection::new(server_cfg).unwrap();
    let mut down = BufReader::new(rustls::StreamOwned::new(conn, tcp));
    let mut line = String::new();
    if down.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let path = line
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_string();
    let mut head = line.clone();
    let mut cookie = None;
    let mut len = 0usize;
    loop {
        let mut h = String::new();
        if down.read_line(&mut h).unwrap_or(0) == 0 {
            return;
        }
        if h.trim_end().is_empty() {
            break;
        }
        let lower = h.to_ascii_lowercase();
        if lower.starts_with("connection:") {
            continue;
        }
        if lower.starts_with("cookie:") {
            cookie = Some(h[7..].trim().to_string());
        }
        if lower.starts_with("content-length:") {
            len = h[15..].trim().parse().unwrap_or(0);
        }
        head.push_str(&h);
    }
    head.push_str("Connection: close\r\n\r\n");
    let mut body = vec![0u8; len];
    if down.read_exact(&mut body).is_err() {
        return;
    }
    let mut n = 0;
    if path.starts_with("/folder") {
        n = st.folder.fetch_add(1, Ordering::SeqCst) + 1;
        if n == st.faults.expire_at {
            st.sessions.lock().unwrap().clear();
        }
        if n == st.faults.outage_at {
            go_down(st, st.faults.outage);
            return;
        }
        let live = cookie.is_some_and(|c| st.sessions.lock().unwrap().contains(&c));
        if !live {
            st.refused.fetch_add(1, Ordering::SeqCst);
            let _ = down.get_mut().write_all(
                b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
            let _ = down.get_mut().flush();
            return;
        }
    }
    let login = String::from_utf8_lossy(&body).contains("<Login ");
    // Forward to the simulator over TLS, read its whole answer (it closes after it).
    let Ok(up_tcp) = TcpStream::connect(("127.0.0.1", st.upstream)) else {
        return;
    };
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let conn = rustls::ClientConnection::new(client_cfg, name).unwrap();
    let mut up = rustls::StreamOwned::new(conn, up_tcp);
    if up.write_all(head.as_bytes()).is_err() || up.write_all(&body).is_err() {
        return;
    }
    let mut resp = Vec::new();
    let _ = up.read_to_end(&mut resp);
    let split = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(resp.len());
    if login {
        st.logins.fetch_add(1, Ordering::SeqCst);
        for l in String::from_utf8_lossy(&resp[..split]).lines() {
            if let Some(v) = l
                .strip_prefix("Set-Cookie:")
                .or_else(|| l.strip_prefix("set-cookie:"))
            {
                let pair = v.split(';').next().unwrap_or_default().trim();
                if pair.starts_with("vmware_soap_session=") {
                    st.sessions.lock().unwrap().insert(pair.to_string());
                }
            }
        }
    }
    if n > 0 && n == st.faults.truncate_at {
        let cut = split + (resp.len() - split) / 2;
        resp.truncate(cut);
    }
    if n > 0 && n == st.faults.wrong_range_at {
        let head = String::from_utf8_lossy(&resp[..split]).replace("bytes 0-", "bytes 512-");
        resp.splice(..split, head.into_bytes());
    }
    let _ = down.get_mut().write_all(&resp);
    let _ = down.get_mut().flush();
    let _ = down.get_mut().sock.shutdown(Shutdown::Both);
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
