//! What the simulator cannot show, against a small scripted HTTPS server with the same
//! test PKI: HTTP 503 (vcsim never answers it) is retried with backoff until the
//! server recovers, and a server that stays busy gives a clear HTTP 503 error after
//! the named number of attempts; oversized and endless bodies are refused; and a
//! session that expires under a datastore download (vcsim does not check sessions on
//! `/folder`) is renewed on that path, for the descriptor and for the extent stream;
//! a certificate from an unknown CA fails with what to do about it.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use v2k_vsphere::client::{Session, MAX_ATTEMPTS_503};
use v2k_vsphere::{Credentials, Error, Options, Secret, TlsMode};

/// A ServiceContent as vCenter returns it (trimmed to what the client reads).
const SERVICE_CONTENT: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body><RetrieveServiceContentResponse xmlns="urn:vim25"><returnval><rootFolder type="Folder">group-d1</rootFolder><propertyCollector type="PropertyCollector">propertyCollector</propertyCollector><viewManager type="ViewManager">ViewManager</viewManager><about><name>VMware vCenter Server</name><fullName>VMware vCenter Server 7.0.3 build-20150588</fullName><apiType>VirtualCenter</apiType><apiVersion>7.0.3.0</apiVersion></about><sessionManager type="SessionManager">SessionManager</sessionManager><searchIndex type="SearchIndex">SearchIndex</searchIndex></returnval></RetrieveServiceContentResponse></soapenv:Body></soapenv:Envelope>"#;

/// What the scripted server answers once it is no longer busy.
#[derive(Clone, Copy)]
enum Answer {
    ServiceContent,
    /// Claims a body over the client's limit (and sends a little of it).
    HugeLength,
    /// A chunked body that never ends (bytes until the client hangs up).
    Endless,
}

/// One HTTP request as the scripted server read it.
struct Request {
    method: String,
    path: String,
    /// Header names lower-cased.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Serves HTTPS on loopback with the test PKI, handing every request to `handler`,
/// which writes the whole response and returns whether to keep the connection.
fn serve<H>(handler: H) -> u16
where
    H: Fn(&Request, &mut dyn Write) -> bool + Send + Sync + 'static,
{
    let cfg = common::tls_server_config();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let handler = Arc::new(handler);
    std::thread::spawn(move || {
        for tcp in l.incoming() {
            let Ok(tcp) = tcp else { break };
            let conn = rustls::ServerConnection::new(cfg.clone()).unwrap();
            let handler = handler.clone();
            std::thread::spawn(move || {
                let mut s = BufReader::new(rustls::StreamOwned::new(conn, tcp));
                loop {
                    let mut line = String::new();
                    if s.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let mut parts = line.split_whitespace();
                    let method = parts.next().unwrap_or_default().to_string();
                    let path = parts.next().unwrap_or_default().to_string();
                    let mut headers = Vec::new();
                    loop {
                        line.clear();
                        if s.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        let l = line.trim_end();
                        if l.is_empty() {
                            break;
                        }
                        if let Some((n, v)) = l.split_once(':') {
                            headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
                        }
                    }
                    let len = headers
                        .iter()
                        .find(|(n, _)| n == "content-length")
                        .map_or(0, |(_, v)| v.parse().unwrap());
                    let mut body = vec![0u8; len];
                    if s.read_exact(&mut body).is_err() {
                        return;
                    }
                    let req = Request {
                        method,
                        path,
                        headers,
                        body,
                    };
                    let w = s.get_mut();
                    if !handler(&req, w) || w.flush().is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

/// Serves HTTPS on loopback: the first `busy` requests get 503, the rest `answer`.
/// Returns the port and the request counter; also records the SOAPAction of the last
/// request.
fn server(busy: usize) -> (u16, Arc<AtomicUsize>, Arc<std::sync::Mutex<String>>) {
    server_answering(busy, Answer::ServiceContent)
}

fn server_answering(
    busy: usize,
    answer: Answer,
) -> (u16, Arc<AtomicUsize>, Arc<std::sync::Mutex<String>>) {
    let count = Arc::new(AtomicUsize::new(0));
    let action = Arc::new(std::sync::Mutex::new(String::new()));
    let (c2, a2) = (count.clone(), action.clone());
    let port = serve(move |req, w| {
        if let Some(a) = req.header("soapaction") {
            *a2.lock().unwrap() = a.to_string();
        }
        let n = c2.fetch_add(1, Ordering::SeqCst);
        let resp = match answer {
            _ if n < busy => {
                "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n".to_string()
            }
            Answer::ServiceContent => format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nContent-Length: {}\r\n\r\n{SERVICE_CONTENT}",
                SERVICE_CONTENT.len()
            ),
            Answer::HugeLength => {
                "HTTP/1.1 200 OK\r\nContent-Length: 1099511627776\r\n\r\n<a>".to_string()
            }
            Answer::Endless => {
                let _ = w.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
                let chunk = vec![b'a'; 1 << 20];
                let head = format!("{:x}\r\n", chunk.len());
                // Until the client gives up (a write fails).
                while w
                    .write_all(head.as_bytes())
                    .and_then(|_| w.write_all(&chunk))
                    .and_then(|_| w.write_all(b"\r\n"))
                    .is_ok()
                {}
                return false;
            }
        };
        w.write_all(resp.as_bytes()).is_ok()
    });
    (port, count, action)
}

fn connect(port: u16) -> Result<Session, Error> {
    connect_with(port, TlsMode::Pinned(common::pki().thumbprint))
}

fn connect_with(port: u16, tls: TlsMode) -> Result<Session, Error> {
    let opts = Options {
        host: "127.0.0.1".into(),
        port,
        tls,
    };
    let creds = Credentials {
        user: "u".into(),
        password: Secret::new("p"),
    };
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(Session::connect(&opts, creds))
}

#[test]
fn a_busy_server_is_retried_with_backoff_until_it_answers() {
    let (port, count, action) = server(2);
    let started = Instant::now();
    let s = connect(port).unwrap();
    assert_eq!(count.load(Ordering::SeqCst), 3);
    // Two backoffs: 250 ms then 500 ms.
    assert!(
        started.elapsed() >= Duration::from_millis(700),
        "{:?}",
        started.elapsed()
    );
    let c = s.content().unwrap();
    assert_eq!(c.api_version, "7.0.3.0");
    // Before the version is known, the bootstrap SOAPAction is used.
    assert_eq!(*action.lock().unwrap(), "urn:vim25/6.0");
}

#[test]
fn an_untrusted_certificate_says_how_to_pin_it_or_trust_its_ca() {
    // Default verification without the test CA: the issuer is unknown.
    let (port, _, _) = server(0);
    let e = connect_with(port, TlsMode::default()).unwrap_err();
    assert!(matches!(e, Error::UntrustedCertificate { .. }), "{e:?}");
    let msg = e.to_string();
    for want in [
        &format!("v2k vsphere thumbprint 127.0.0.1:{port}") as &str,
        "--thumbprint",
        "--ca-file",
        "UnknownIssuer",
    ] {
        assert!(msg.contains(want), "{want:?} missing from: {msg}");
    }
}

#[test]
fn a_server_that_stays_busy_fails_with_http_503() {
    let (port, count, _) = server(usize::MAX);
    match connect(port) {
        Err(Error::Http { status: 503, .. }) => {}
        other => panic!("expected HTTP 503, got {other:?}"),
    }
    assert_eq!(count.load(Ordering::SeqCst), MAX_ATTEMPTS_503 as usize);
}

#[test]
fn responses_over_the_size_limit_are_refused_without_buffering_them() {
    // A Content-Length of 1 TiB: refused before reading the body.
    let (port, _, _) = server_answering(0, Answer::HugeLength);
    let e = connect(port).unwrap_err();
    assert!(e.to_string().contains("limit"), "{e}");
    // A chunked body that never ends: cut at the limit.
    let (port, _, _) = server_answering(0, Answer::Endless);
    let e = connect(port).unwrap_err();
    assert!(e.to_string().contains("limit"), "{e}");
}

/// What the expiring server has seen.
#[derive(Default)]
struct Sessions {
    /// The cookie value that is currently logged in, if any.
    valid: Option<String>,
    logins: usize,
    refused_downloads: usize,
    served_descriptor: bool,
}

/// A server whose session expires under a datastore download (vcsim does not check
/// sessions on `/folder`, so this is scripted): every `/folder` request without the
/// current session cookie gets 401, and the session expires again right after the
/// descriptor is served. The client must log in again on the datastore path itself,
/// for the descriptor (`fetch_small`) and for the flat extent's Range stream
/// (`stream_file`), and deliver every byte.
#[test]
fn an_expired_session_is_renewed_on_datastore_downloads() {
    const SIZE: usize = (2 << 20) + 4096;
    let data = Arc::new(common::pattern(SIZE, 9));
    let state = Arc::new(std::sync::Mutex::new(Sessions::default()));
    let (st, d2) = (state.clone(), data.clone());
    let port = serve(move |req, w| {
        let mut st = st.lock().unwrap();
        let body = String::from_utf8_lossy(&req.body);
        let soap = |w: &mut dyn Write, extra: &str, xml: &str| {
            let env = format!(
                "<?xml version=\"1.0\"?><soapenv:Envelope xmlns:soapenv=\"http://schemas.xmlsoap.org/soap/envelope/\"><soapenv:Body>{xml}</soapenv:Body></soapenv:Envelope>"
            );
            w.write_all(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\n{extra}Content-Length: {}\r\n\r\n{env}",
                    env.len()
                )
                .as_bytes(),
            )
            .is_ok()
        };
        if req.method == "POST" {
            if body.contains("RetrieveServiceContent") {
                return w
                    .write_all(
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{SERVICE_CONTENT}",
                            SERVICE_CONTENT.len()
                        )
                        .as_bytes(),
                    )
                    .is_ok();
            }
            if body.contains("<Login") {
                st.logins += 1;
                let key = format!("s{}", st.logins);
                st.valid = Some(key.clone());
                return soap(
                    w,
                    &format!("Set-Cookie: vmware_soap_session=\"{key}\"; Path=/; HttpOnly; Secure\r\n"),
                    "<LoginResponse xmlns=\"urn:vim25\"><returnval><key>k</key><userName>u</userName></returnval></LoginResponse>",
                );
            }
            return soap(
                w,
                "",
                "<LogoutResponse xmlns=\"urn:vim25\"></LogoutResponse>",
            );
        }
        let authorised = match (&st.valid, req.header("cookie")) {
            (Some(v), Some(c)) => c.contains(&format!("vmware_soap_session=\"{v}\"")),
            _ => false,
        };
        if !authorised {
            st.refused_downloads += 1;
            return w
                .write_all(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n")
                .is_ok();
        }
        if req.path.starts_with("/folder/vm/disk.vmdk?") {
            let desc = format!(
                "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"vmfs\"\n\nRW {} VMFS \"disk-flat.vmdk\"\n",
                SIZE / 512
            );
            // Expires the moment the descriptor is out: the extent's stream must
            // renew the session in turn.
            if !st.served_descriptor {
                st.served_descriptor = true;
                st.valid = None;
            }
            return w
                .write_all(
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{desc}",
                        desc.len()
                    )
                    .as_bytes(),
                )
                .is_ok();
        }
        assert!(
            req.path.starts_with("/folder/vm/disk-flat.vmdk?"),
            "{}",
            req.path
        );
        let from: usize = req
            .header("range")
            .and_then(|r| r.strip_prefix("bytes="))
            .and_then(|r| r.strip_suffix('-'))
            .map_or(0, |n| n.parse().unwrap());
        let head = format!(
            "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {from}-{}/{SIZE}\r\nContent-Length: {}\r\n\r\n",
            SIZE - 1,
            SIZE - from
        );
        w.write_all(head.as_bytes())
            .and_then(|_| w.write_all(&d2[from..]))
            .is_ok()
    });
    let client = v2k_vsphere::Client::connect(
        &Options {
            host: "127.0.0.1".into(),
            port,
            tls: TlsMode::Pinned(common::pki().thumbprint),
        },
        Credentials {
            user: "u".into(),
            password: Secret::new("p"),
        },
    )
    .unwrap();
    assert_eq!(state.lock().unwrap().logins, 1);
    // The session expires before the download starts.
    state.lock().unwrap().valid = None;
    let source = v2k_vsphere::DiskSource {
        descriptor: v2k_vsphere::DatastorePath {
            datastore: "ds1".into(),
            path: "vm/disk.vmdk".into(),
        },
        datacenter: "DC1".into(),
        host: None,
    };
    let got = client.stream_disks(
        std::slice::from_ref(&source),
        1,
        &v2k_vsphere::datastore::NoDownloadProgress,
        |_, info, r| {
            assert_eq!(info.flat.size, SIZE as u64);
            let mut v = Vec::new();
            r.read_to_end(&mut v).unwrap();
            Ok(v)
        },
    );
    let got = got
        .into_iter()
        .next()
        .unwrap()
        .expect("the download after renewals");
    assert!(got == *data, "the bytes delivered are the disk's");
    let st = state.lock().unwrap();
    assert_eq!(
        st.refused_downloads, 2,
        "descriptor and extent each refused once"
    );
    assert_eq!(st.logins, 3, "one login, then one renewal per refusal");
}
