//! Errors of the vSphere client. SOAP faults become typed variants that callers
//! branch on (a wrong password is not a network failure); messages never contain a
//! password, a session cookie or an Authorization header.

use std::path::PathBuf;

/// A SOAP fault, by its vim25 type (`<detail>` element's `xsi:type`, else its name).
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FaultKind {
    /// The session is not (or no longer) logged in.
    NotAuthenticated,
    /// Wrong user name or password.
    InvalidLogin,
    /// The user lacks a privilege; `privilege` when the server names it.
    NoPermission { privilege: Option<String> },
    /// The object (VM, datastore, view) does not exist (any more).
    ManagedObjectNotFound,
    /// Any other fault, by type name.
    Other(String),
}

impl std::fmt::Display for FaultKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FaultKind::NotAuthenticated => f.write_str("NotAuthenticated"),
            FaultKind::InvalidLogin => f.write_str("InvalidLogin"),
            FaultKind::NoPermission { privilege: Some(p) } => {
                write!(f, "NoPermission (needs {p})")
            }
            FaultKind::NoPermission { privilege: None } => f.write_str("NoPermission"),
            FaultKind::ManagedObjectNotFound => f.write_str("ManagedObjectNotFound"),
            FaultKind::Other(t) => f.write_str(t),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The address, thumbprint or another argument is not usable.
    #[error("{0}")]
    Usage(String),
    /// The server's certificate does not have the pinned SHA-256 thumbprint.
    #[error("{host}: certificate thumbprint {actual} does not match the pinned {expected}: refusing to connect")]
    ThumbprintMismatch {
        host: String,
        expected: String,
        actual: String,
    },
    /// Default verification found no trusted CA for the server's certificate (ESXi
    /// and vCenter usually carry their own VMCA-signed or self-signed certificates).
    #[error("{host}: the server's certificate is not signed by a trusted CA ({reason}); check its SHA-256 thumbprint with `v2k vsphere thumbprint {host}` and pin it with --thumbprint, or trust its CA with --ca-file PEM")]
    UntrustedCertificate { host: String, reason: String },
    /// TLS or TCP failed (certificate not trusted, connection refused, reset...).
    #[error("{url}: {what}")]
    Transport {
        url: String,
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The server answered with an HTTP status we cannot use.
    #[error("{url}: HTTP {status}{detail}")]
    Http {
        url: String,
        status: u16,
        detail: String,
    },
    /// A SOAP fault.
    #[error("{method}: {kind}: {message}")]
    Fault {
        method: String,
        kind: FaultKind,
        message: String,
    },
    /// The response is not what the API promises (malformed XML, a missing field, a
    /// value out of range, over a size limit).
    #[error("{what}: {message}")]
    Protocol { what: String, message: String },
    /// A local file operation failed.
    #[error("{path}: {what}")]
    Io {
        path: PathBuf,
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// Converting a downloaded disk failed.
    #[error(transparent)]
    Convert(#[from] v2k_converters::Error),
    /// Creating a local file failed or was refused (a link or special file where v2k
    /// writes).
    #[error(transparent)]
    Output(#[from] v2k_outfile::Error),
}

impl Error {
    pub(crate) fn protocol(what: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Protocol {
            what: what.into(),
            message: message.into(),
        }
    }

    pub(crate) fn transport(
        url: &str,
        what: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Error::Transport {
            url: url.to_string(),
            what: what.into(),
            source: source.into(),
        }
    }

    /// The fault kind, when this is a SOAP fault.
    pub fn fault(&self) -> Option<&FaultKind> {
        match self {
            Error::Fault { kind, .. } => Some(kind),
            _ => None,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
