//! A test HTTPS proxy in front of the vCenter simulator (its certificate, the test CA)
//! that enforces the session cookie on `/folder` as ESXi does (vcsim does not: 401
//! without a live session), records the sessions Login creates, and injects faults:
//! sessions expired, the datastore down for a while or for good, a body cut short, a
//! wrong `Content-Range`. Shared by live/tests/datastore.rs and cli/tests/live_faults.rs
//! (included with `#[path]` beside vsphere/tests/common, whose `pki()` it uses).

#![allow(dead_code)]

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use v2k_vsphere::{Options, TlsMode};

use super::common;

/// What the proxy does to `/folder` requests, by their 1-based number.
#[derive(Default)]
pub struct Faults {
    /// Sessions expire just before this request (0: never).
    pub expire_at: usize,
    /// The proxy goes down at this request (0: never), for `outage`, or for good.
    pub outage_at: usize,
    pub outage: Option<Duration>,
    /// This response's body is cut in half (the connection drops).
    pub truncate_at: usize,
    /// This response claims a range starting 512 bytes later than asked.
    pub wrong_range_at: usize,
}

/// An HTTPS proxy in front of the simulator, with its certificate, that checks the
/// session cookie on `/folder` like ESXi (401 without a live session), records the
/// sessions that Login creates, and injects the faults.
pub struct SessionProxy {
    pub port: u16,
    pub st: Arc<ProxyState>,
}

pub struct ProxyState {
    pub upstream: u16,
    pub faults: Faults,
    pub sessions: Mutex<HashSet<String>>,
    pub logins: AtomicUsize,
    pub folder: AtomicUsize,
    pub refused: AtomicUsize,
    pub down: AtomicBool,
    pub gone: AtomicBool,
    pub conns: Mutex<Vec<TcpStream>>,
}

impl SessionProxy {
    pub fn start(upstream: u16, faults: Faults) -> SessionProxy {
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
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server_cfg = common::tls_server_config();
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

    pub fn options(&self) -> Options {
        Options {
            host: "127.0.0.1".into(),
            port: self.port,
            tls: TlsMode::Verify {
                extra_ca: Some(common::pki().ca.clone()),
            },
        }
    }

    /// Every session cookie the simulator handed out through the proxy.
    pub fn cookies(&self) -> Vec<String> {
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
pub fn go_down(st: &Arc<ProxyState>, d: Option<Duration>) {
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
