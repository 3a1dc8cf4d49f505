//! `v2k vsphere thumbprint HOST[:PORT]`, and the vSphere options shared by `inspect`
//! and `migrate` for `vsphere://USER@HOST[:PORT]/DATACENTER/vm/FOLDER/NAME` sources.
//!
//! The password comes from `$V2K_VSPHERE_PASSWORD` or `--password-file` (mode 0600
//! enforced), never from argv; `--thumbprint` pins the server certificate, `--insecure`
//! turns checking off with a warning. Nothing here prints a password, a cookie or an
//! Authorization header: the library's types redact them (docs/vsphere.md).

use std::path::PathBuf;

use anyhow::Context;
use v2k_vsphere::{Address, Client, Credentials, Options, Thumbprint, TlsMode};

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

/// Connects to the server of `addr` as its user, with the TLS mode the flags ask for.
pub fn connect(addr: &Address, a: &SourceArgs) -> anyhow::Result<Client> {
    let tls = if a.insecure {
        eprintln!(
            "v2k: warning: --insecure: the certificate of {} is not checked; anyone on the \
             path can read the password and the disks",
            addr.host
        );
        TlsMode::Insecure
    } else if let Some(t) = &a.thumbprint {
        TlsMode::Pinned(Thumbprint::parse(t)?)
    } else {
        TlsMode::Verify {
            extra_ca: a.ca_file.clone(),
        }
    };
    let password = v2k_vsphere::address::password(a.password_file.as_deref())?;
    let opts = Options {
        host: addr.host.clone(),
        port: addr.port,
        tls,
    };
    Client::connect(
        &opts,
        Credentials {
            user: addr.user.clone(),
            password,
        },
    )
    .with_context(|| format!("connecting to {}:{} as {}", addr.host, addr.port, addr.user))
}

/// A vSphere VM as a `v2k migrate` source: the model from the server, the disks
/// streamed from its datastore into QCOW2 (no temporary full copy).
pub struct Remote {
    client: Client,
    address: Address,
}

impl Remote {
    pub fn connect(address: Address, a: &SourceArgs) -> anyhow::Result<Remote> {
        if address.is_pattern() {
            anyhow::bail!(
                "{}: migrate takes one VM, not a pattern (list them with `v2k inspect`)",
                address.display_without_user()
            );
        }
        Ok(Remote {
            client: connect(&address, a)?,
            address,
        })
    }
}

impl v2k_migrate::RemoteSource for Remote {
    fn describe(&self) -> String {
        self.address.display_without_user()
    }

    fn load(&self) -> Result<v2k_inventory::model::Vm, String> {
        v2k_vsphere::inventory::get_vm(&self.client, &self.address.inventory_path)
            .map_err(|e| e.to_string())
    }

    fn convert(
        &self,
        vm: &v2k_inventory::model::Vm,
        outputs: &[PathBuf],
        progress: &dyn v2k_converters::convert::Progress,
    ) -> Vec<Result<v2k_converters::manifest::Manifest, String>> {
        let jobs = match v2k_vsphere::convert::disk_jobs(vm, |i| outputs[i].clone()) {
            Ok(j) => j,
            Err(e) => return outputs.iter().map(|_| Err(e.to_string())).collect(),
        };
        let opts = v2k_converters::convert::Options {
            overwrite: true,
            ..v2k_converters::convert::Options::default()
        };
        v2k_vsphere::convert::download_and_convert(
            &self.client,
            &jobs,
            &opts,
            v2k_vsphere::convert::DEFAULT_PER_HOST,
            &v2k_vsphere::datastore::NoDownloadProgress,
            progress,
        )
        .into_iter()
        .map(|r| r.map_err(|e| e.to_string()))
        .collect()
    }
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
