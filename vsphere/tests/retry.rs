//! HTTP 503 handling against a small scripted HTTPS server (the simulator never
//! answers 503): busy answers are retried with backoff until the server recovers, and
//! a server that stays busy gives a clear HTTP 503 error after the named number of
//! attempts. The server uses the same test PKI as the simulator tests.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
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
    let pki = common::pki();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&pki.cert)
        .unwrap()
        .map(|c| c.unwrap())
        .collect();
    let key = PrivateKeyDer::from_pem_file(&pki.key).unwrap();
    let cfg = Arc::new(
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap(),
    );
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let count = Arc::new(AtomicUsize::new(0));
    let action = Arc::new(std::sync::Mutex::new(String::new()));
    let (c2, a2) = (count.clone(), action.clone());
    std::thread::spawn(move || {
        for tcp in l.incoming() {
            let Ok(tcp) = tcp else { break };
            let conn = rustls::ServerConnection::new(cfg.clone()).unwrap();
            let (count, action) = (c2.clone(), a2.clone());
            std::thread::spawn(move || {
                let mut s = BufReader::new(rustls::StreamOwned::new(conn, tcp));
                loop {
                    let mut len = 0usize;
                    let mut line = String::new();
                    if s.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    loop {
                        line.clear();
                        if s.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        let l = line.trim_end();
                        if l.is_empty() {
                            break;
                        }
                        let lower = l.to_ascii_lowercase();
                        if let Some(v) = lower.strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap();
                        }
                        if lower.starts_with("soapaction:") {
                            *action.lock().unwrap() = l[11..].trim().to_string();
                        }
                    }
                    let mut body = vec![0u8; len];
                    if s.read_exact(&mut body).is_err() {
                        return;
                    }
                    let n = count.fetch_add(1, Ordering::SeqCst);
                    let resp = match answer {
                        _ if n < busy => {
                            "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n"
                                .to_string()
                        }
                        Answer::ServiceContent => format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nContent-Length: {}\r\n\r\n{SERVICE_CONTENT}",
                            SERVICE_CONTENT.len()
                        ),
                        Answer::HugeLength => {
                            "HTTP/1.1 200 OK\r\nContent-Length: 1099511627776\r\n\r\n<a>".to_string()
                        }
                        Answer::Endless => {
                            let w = s.get_mut();
                            let _ = w.write_all(
                                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                            );
                            let chunk = vec![b'a'; 1 << 20];
                            let head = format!("{:x}\r\n", chunk.len());
                            // Until the client gives up (a write fails).
                            while w
                                .write_all(head.as_bytes())
                                .and_then(|_| w.write_all(&chunk))
                                .and_then(|_| w.write_all(b"\r\n"))
                                .is_ok()
                            {}
                            return;
                        }
                    };
                    let w = s.get_mut();
                    if w.write_all(resp.as_bytes())
                        .and_then(|_| w.flush())
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    (port, count, action)
}

fn connect(port: u16) -> Result<Session, Error> {
    let opts = Options {
        host: "127.0.0.1".into(),
        port,
        tls: TlsMode::Pinned(common::pki().thumbprint),
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
