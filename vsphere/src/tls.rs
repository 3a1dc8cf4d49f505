//! TLS for vCenter/ESXi: verified against the system's roots (plus an optional CA
//! file) by default; or pinned to the SHA-256 thumbprint of the server's leaf
//! certificate, a mismatch being fatal; or, only when the user explicitly asks,
//! insecure (the caller warns). [`fetch_thumbprint`] shows a server's thumbprint so
//! that the user can confirm it out of band and pin it.
//!
//! Pinning replaces chain and name validation (ESXi hosts usually carry self-signed
//! certificates for names that do not resolve), but the handshake signature is still
//! checked against the pinned certificate's key, so a man in the middle who replays
//! the real certificate without its key fails. All configurations use rustls with the
//! `ring` provider, built here rather than taken from a process-wide default.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// A CA file larger than this is not a bundle of CA certificates: the whole Mozilla
/// bundle is about 220 KiB.
const MAX_CA_FILE_BYTES: u64 = 4 << 20;

/// How the server's certificate is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsMode {
    /// Chain and host name verified against the system roots and, when given, the
    /// CA certificates (PEM) in this file.
    Verify { extra_ca: Option<PathBuf> },
    /// The leaf certificate's SHA-256 must equal this (see [`Thumbprint`]).
    Pinned(Thumbprint),
    /// Nothing checked. Only by explicit choice; the caller warns.
    Insecure,
}

impl Default for TlsMode {
    fn default() -> Self {
        TlsMode::Verify { extra_ca: None }
    }
}

/// Hex digits of a SHA-1 thumbprint (20 bytes), refused with its own message.
const SHA1_HEX_DIGITS: usize = 40;

/// A SHA-256 certificate thumbprint.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Thumbprint(pub [u8; 32]);

impl Thumbprint {
    /// Parses 64 hex digits, with or without `:` between bytes, either case (the
    /// forms vSphere's UI, `openssl x509 -fingerprint` and govc print).
    pub fn parse(s: &str) -> Result<Self> {
        let hex_digits: String = s.trim().chars().filter(|c| *c != ':').collect();
        let bad = || {
            Error::Usage(format!(
                "thumbprint {s:?} is not a SHA-256 thumbprint (64 hex digits, colons allowed)"
            ))
        };
        // 40 hex digits is the SHA-1 thumbprint older vSphere clients show. SHA-1
        // collisions can be forged, so it is refused by name rather than as garbage.
        if hex_digits.len() == SHA1_HEX_DIGITS && hex_digits.chars().all(|c| c.is_ascii_hexdigit())
        {
            return Err(Error::Usage(format!(
                "thumbprint {s:?} is a SHA-1 thumbprint: SHA-1 is not accepted (its collisions \
                 can be forged); pin the SHA-256 thumbprint (64 hex digits) that \
                 `v2k vsphere thumbprint HOST` prints, or that \
                 `openssl x509 -noout -fingerprint -sha256` shows for the certificate"
            )));
        }
        if hex_digits.len() != 64 {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(&hex_digits, &mut out).map_err(|_| bad())?;
        Ok(Thumbprint(out))
    }

    /// SHA-256 of a DER certificate.
    pub fn of_der(der: &[u8]) -> Self {
        Thumbprint(Sha256::digest(der).into())
    }
}

impl std::fmt::Display for Thumbprint {
    /// Uppercase hex with colons, as vSphere shows it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{b:02X}")?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for Thumbprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Thumbprint({self})")
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn builder() -> Result<rustls::ConfigBuilder<ClientConfig, rustls::WantsVerifier>> {
    ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Usage(format!("TLS set-up: {e}")))
}

/// Pins the leaf certificate; records the thumbprint it saw, for the error message.
#[derive(Debug)]
struct PinVerifier {
    pin: Option<Thumbprint>,
    seen: Arc<Mutex<Option<Thumbprint>>>,
    provider: Arc<CryptoProvider>,
    /// Skip handshake signature checks (insecure mode only).
    check_signatures: bool,
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let got = Thumbprint::of_der(end_entity.as_ref());
        if let Ok(mut s) = self.seen.lock() {
            *s = Some(got);
        }
        match self.pin {
            // Compared in full; timing reveals nothing useful about a public value.
            Some(p) if p != got => Err(rustls::Error::General(format!(
                "certificate thumbprint {got} does not match the pinned {p}"
            ))),
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        if !self.check_signatures {
            return Ok(HandshakeSignatureValid::assertion());
        }
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        if !self.check_signatures {
            return Ok(HandshakeSignatureValid::assertion());
        }
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A client configuration for `mode`, and (for pinned and insecure modes) where the
/// verifier records the thumbprint it saw.
pub(crate) fn client_config(
    mode: &TlsMode,
) -> Result<(ClientConfig, Arc<Mutex<Option<Thumbprint>>>)> {
    let seen = Arc::new(Mutex::new(None));
    let pin_verifier = |pin: Option<Thumbprint>, check_signatures: bool| PinVerifier {
        pin,
        seen: seen.clone(),
        provider: provider(),
        check_signatures,
    };
    let cfg = match mode {
        TlsMode::Verify { extra_ca } => {
            let mut roots = RootCertStore::empty();
            // Unreadable system certificates are skipped; if nothing is trusted at
            // all the handshake fails with a clear "unknown issuer".
            for c in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(c);
            }
            if let Some(path) = extra_ca {
                use rustls_pki_types::pem::PemObject;
                // Read through the untrusted-file helper (no FIFO hang, no endless
                // /dev/zero), then parsed from memory.
                let pem =
                    v2k_untrusted::file::read(path, MAX_CA_FILE_BYTES, "CA file").map_err(|e| {
                        Error::Usage(format!("{}: reading CA certificates: {e}", path.display()))
                    })?;
                let certs = CertificateDer::pem_slice_iter(&pem);
                let mut n = 0;
                for c in certs {
                    let c = c.map_err(|e| {
                        Error::Usage(format!("{}: reading CA certificates: {e}", path.display()))
                    })?;
                    roots.add(c).map_err(|e| {
                        Error::Usage(format!("{}: unusable CA certificate: {e}", path.display()))
                    })?;
                    n += 1;
                }
                if n == 0 {
                    return Err(Error::Usage(format!(
                        "{}: no PEM certificate in the CA file",
                        path.display()
                    )));
                }
            }
            builder()?
                .with_root_certificates(roots)
                .with_no_client_auth()
        }
        TlsMode::Pinned(t) => builder()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(pin_verifier(Some(*t), true)))
            .with_no_client_auth(),
        TlsMode::Insecure => builder()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(pin_verifier(None, false)))
            .with_no_client_auth(),
    };
    Ok((cfg, seen))
}

/// Longest wait for the TCP connection and the TLS handshake of [`fetch_thumbprint`].
pub const THUMBPRINT_TIMEOUT: Duration = Duration::from_secs(20);

/// Connects to `host:port`, completes a TLS handshake without trusting anything, and
/// returns the SHA-256 thumbprint of the certificate the server presented, for the
/// user to confirm and pin. Nothing is sent beyond the handshake.
pub fn fetch_thumbprint(host: &str, port: u16) -> Result<Thumbprint> {
    let target = format!("{host}:{port}");
    let (cfg, seen) = client_config(&TlsMode::Insecure)?;
    let name = ServerName::try_from(host.trim_start_matches('[').trim_end_matches(']'))
        .map_err(|e| Error::Usage(format!("{host}: not a host name or address: {e}")))?
        .to_owned();
    let addr = target
        .to_socket_addrs()
        .map_err(|e| Error::transport(&target, "resolving", e))?
        .next()
        .ok_or_else(|| Error::Usage(format!("{target}: resolves to no address")))?;
    let mut tcp = TcpStream::connect_timeout(&addr, THUMBPRINT_TIMEOUT)
        .map_err(|e| Error::transport(&target, "connecting", e))?;
    let _ = tcp.set_read_timeout(Some(THUMBPRINT_TIMEOUT));
    let _ = tcp.set_write_timeout(Some(THUMBPRINT_TIMEOUT));
    let mut conn = rustls::ClientConnection::new(Arc::new(cfg), name)
        .map_err(|e| Error::transport(&target, "TLS set-up", e))?;
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp)
            .map_err(|e| Error::transport(&target, "TLS handshake", e))?;
    }
    // Say goodbye properly; errors here do not matter, we have what we came for.
    conn.send_close_notify();
    let _ = conn.complete_io(&mut tcp);
    let _ = tcp.flush();
    let _ = tcp.read(&mut [0u8; 0]);
    let got = seen.lock().ok().and_then(|s| *s);
    got.ok_or_else(|| Error::protocol(target, "the server presented no certificate"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_thumbprints_with_or_without_colons_either_case() {
        let plain = "ab".repeat(32);
        let colons = vec!["AB"; 32].join(":");
        assert_eq!(
            Thumbprint::parse(&plain).unwrap(),
            Thumbprint::parse(&colons).unwrap()
        );
        assert_eq!(Thumbprint::parse(&plain).unwrap().0, [0xab; 32]);
        assert_eq!(Thumbprint([0xab; 32]).to_string(), colons);
    }

    #[test]
    fn refuses_sha1_thumbprints_and_garbage() {
        // A SHA-1 thumbprint (what older vSphere showed) is too short: refused, not
        // silently compared against a SHA-256.
        for sha1 in [
            "ab:".repeat(20).trim_end_matches(':').to_string(),
            "AB".repeat(20),
        ] {
            let e = Thumbprint::parse(&sha1).unwrap_err().to_string();
            assert!(
                e.contains("SHA-1 is not accepted") && e.contains("v2k vsphere thumbprint HOST"),
                "{e}"
            );
        }
        // Not 40 hex digits: the generic message, which does not blame SHA-1.
        let e = Thumbprint::parse(&"ab".repeat(21)).unwrap_err().to_string();
        assert!(!e.contains("SHA-1") && e.contains("64 hex digits"), "{e}");
        assert!(Thumbprint::parse(&"zz".repeat(32)).is_err());
        assert!(Thumbprint::parse("").is_err());
    }

    #[test]
    fn builds_every_mode() {
        for m in [
            TlsMode::default(),
            TlsMode::Pinned(Thumbprint([1; 32])),
            TlsMode::Insecure,
        ] {
            client_config(&m).unwrap();
        }
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("ca.pem");
        std::fs::write(&f, "not pem").unwrap();
        assert!(client_config(&TlsMode::Verify { extra_ca: Some(f) }).is_err());
    }
}
