//! How to reach a vSphere server, as the user configured it: where the password comes
//! from and how the certificate is checked. One type for the `v2k inspect` / `v2k
//! migrate` flags and a wave plan's `vsphere:` section, so that both connect the same
//! way (and a plan can never hold a password: only the file that does).

use std::path::PathBuf;

use crate::address::{password, Address};
use crate::client::{Client, Credentials, Options};
use crate::error::{Error, Result};
use crate::tls::{Thumbprint, TlsMode};

/// Connection settings for one server. The default checks the certificate against
/// the system roots and takes the password from [`crate::address::PASSWORD_ENV`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings {
    /// File holding the password (first line; mode 0600 or stricter).
    pub password_file: Option<PathBuf>,
    /// Pin the server certificate by its SHA-256 thumbprint.
    pub thumbprint: Option<String>,
    /// Extra CA certificates (PEM) to trust.
    pub ca_file: Option<PathBuf>,
    /// Check nothing (the caller warns the user).
    pub insecure: bool,
}

impl Settings {
    /// The TLS mode these settings ask for; contradictory settings are refused, not
    /// resolved by precedence (a pin that silently loses to `insecure` is a trap).
    pub fn tls_mode(&self) -> Result<TlsMode> {
        match (self.insecure, &self.thumbprint, &self.ca_file) {
            (true, Some(_), _) | (true, _, Some(_)) => Err(Error::Usage(
                "insecure cannot be combined with a thumbprint or a CA file".into(),
            )),
            (false, Some(_), Some(_)) => Err(Error::Usage(
                "give a thumbprint or a CA file, not both".into(),
            )),
            (true, None, None) => Ok(TlsMode::Insecure),
            (false, Some(t), None) => Ok(TlsMode::Pinned(Thumbprint::parse(t)?)),
            (false, None, ca) => Ok(TlsMode::Verify {
                extra_ca: ca.clone(),
            }),
        }
    }

    /// Connects to the server of `addr` and logs in as its user.
    pub fn connect(&self, addr: &Address) -> Result<Client> {
        let tls = self.tls_mode()?;
        let password = password(self.password_file.as_deref())?;
        Client::connect(
            &Options {
                host: addr.host.clone(),
                port: addr.port,
                tls,
            },
            Credentials {
                user: addr.user.clone(),
                password,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_mode_follows_the_settings_and_refuses_contradictions() {
        let s = Settings::default();
        assert!(matches!(
            s.tls_mode().unwrap(),
            TlsMode::Verify { extra_ca: None }
        ));
        let pin = "ab".repeat(32);
        let s = Settings {
            thumbprint: Some(pin.clone()),
            ..Settings::default()
        };
        assert!(matches!(s.tls_mode().unwrap(), TlsMode::Pinned(_)));
        let s = Settings {
            insecure: true,
            ..Settings::default()
        };
        assert!(matches!(s.tls_mode().unwrap(), TlsMode::Insecure));
        for bad in [
            Settings {
                insecure: true,
                thumbprint: Some(pin.clone()),
                ..Settings::default()
            },
            Settings {
                insecure: true,
                ca_file: Some("/ca.pem".into()),
                ..Settings::default()
            },
            Settings {
                thumbprint: Some(pin.clone()),
                ca_file: Some("/ca.pem".into()),
                ..Settings::default()
            },
            Settings {
                thumbprint: Some("nothex".into()),
                ..Settings::default()
            },
        ] {
            assert!(matches!(bad.tls_mode(), Err(Error::Usage(_))), "{bad:?}");
        }
    }
}
