//! `v2k vsphere thumbprint HOST[:PORT]`, and the vSphere options shared by `inspect`
//! and `migrate` for `vsphere://USER@HOST[:PORT]/DATACENTER/vm/FOLDER/NAME` sources.
//!
//! The password comes from `$V2K_VSPHERE_PASSWORD` or `--password-file` (mode 0600
//! enforced), never from argv; `--thumbprint` pins the server certificate, `--insecure`
//! turns checking off with a warning. Nothing here prints a password, a cookie or an
//! Authorization header: the library's types redact them (docs/vsphere.md).

use std::path::PathBuf;

use anyhow::Context;
use v2k_migrate::vsphere::VsphereSource;
use v2k_vsphere::{Address, Client};

/// vCenter/ESXi helpers
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Sub,
}

#[derive(clap::Subcommand)]
enum Sub {
    /// Print the SHA-256 thumbprint of a server's TLS certificate, to confirm and pin
    #[command(
        long_about = "Print the SHA-256 thumbprint of a server's TLS certificate, to confirm \
        out of band (vSphere client: host > Configure > Certificate) and then pass as \
        --thumbprint. Nothing is trusted or sent beyond the TLS handshake."
    )]
    Thumbprint {
        /// HOST or HOST:PORT (default port 443)
        #[arg(value_name = "HOST[:PORT]")]
        server: String,
    },
}

/// How to reach a vSphere source (flattened into `inspect` and `migrate`).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct SourceArgs {
    /// File holding the vSphere password (first line; mode 0600). Default: $V2K_VSPHERE_PASSWORD
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// Pin the server certificate by its SHA-256 thumbprint (see `v2k vsphere thumbprint`)
    #[arg(long, value_name = "SHA256", conflicts_with = "insecure")]
    pub thumbprint: Option<String>,
    /// Extra CA certificates (PEM) to trust for the vSphere server
    #[arg(long, value_name = "PEM", conflicts_with_all = ["insecure", "thumbprint"])]
    pub ca_file: Option<PathBuf>,
    /// Do not check the vSphere server's certificate at all (warns)
    #[arg(long)]
    pub insecure: bool,
}

/// Splits `HOST[:PORT]` (IPv6 in brackets).
fn host_port(s: &str) -> anyhow::Result<(String, u16)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (h, after) = rest
            .split_once(']')
            .with_context(|| format!("{s}: unclosed ["))?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().with_context(|| format!("{s}: bad port"))?,
            None => 443,
        };
        return Ok((h.to_string(), port));
    }
    match s.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => Ok((
            h.to_string(),
            p.parse().with_context(|| format!("{s}: bad port"))?,
        )),
        _ => Ok((s.to_string(), 443)),
    }
}

pub fn exec(args: Args) -> anyhow::Result<i32> {
    match args.command {
        Sub::Thumbprint { server } => {
            let (host, port) = host_port(&server)?;
            let t = v2k_vsphere::fetch_thumbprint(&host, port)
                .with_context(|| format!("fetching the certificate of {host}:{port}"))?;
            println!("{t}");
            Ok(crate::exit::OK)
        }
    }
}

impl SourceArgs {
    /// The library's connection settings for these flags.
    pub fn settings(&self) -> v2k_vsphere::ConnectSettings {
        v2k_vsphere::ConnectSettings {
            password_file: self.password_file.clone(),
            thumbprint: self.thumbprint.clone(),
            ca_file: self.ca_file.clone(),
            insecure: self.insecure,
        }
    }
}

/// Warns on stderr when `settings` turn certificate checking off for `host`; `how`
/// names the switch that did (`--insecure`, a plan's `insecure: true`).
pub fn warn_insecure(settings: &v2k_vsphere::ConnectSettings, host: &str, how: &str) {
    if settings.insecure {
        crate::console::say!(
            "v2k: warning: {how}: the certificate of {host} is not checked; anyone on the \
             path can read the password and the disks"
        );
    }
}

/// Connects to the server of `addr` as its user, with the TLS mode the flags ask for.
pub fn connect(addr: &Address, a: &SourceArgs) -> anyhow::Result<Client> {
    let settings = a.settings();
    warn_insecure(&settings, &addr.host, "--insecure");
    settings
        .connect(addr)
        .with_context(|| format!("connecting to {}:{} as {}", addr.host, addr.port, addr.user))
}

/// The one VM a `v2k migrate vsphere://…` source names, connected.
pub fn remote(addr: Address, a: &SourceArgs) -> anyhow::Result<VsphereSource> {
    let settings = a.settings();
    warn_insecure(&settings, &addr.host, "--insecure");
    let what = format!("connecting to {}:{} as {}", addr.host, addr.port, addr.user);
    VsphereSource::connect(addr, &settings).context(what)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_host_and_port() {
        assert_eq!(host_port("vc").unwrap(), ("vc".into(), 443));
        assert_eq!(host_port("vc:8443").unwrap(), ("vc".into(), 8443));
        assert_eq!(host_port("[::1]:9").unwrap(), ("::1".into(), 9));
        assert_eq!(host_port("::1").unwrap(), ("::1".into(), 443));
        assert!(host_port("vc:x").is_err());
    }
}
