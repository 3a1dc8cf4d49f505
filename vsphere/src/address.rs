//! vSphere source addresses and where the password comes from.
//!
//! An address is `vsphere://USER@HOST[:PORT]/DATACENTER/vm/FOLDER/NAME`: the part
//! after the host is the VM's inventory path (as `SearchIndex.FindByInventoryPath`
//! takes it). A password is never part of an address, an argument or a log line: it
//! comes from the environment variable [`PASSWORD_ENV`] or from a file that only its
//! owner can read (mode 0600 or stricter), whose first line is the password.
//!
//! The binary calls [`take_password_from_env`] first thing, before it has any thread
//! or child: the variable is read once and removed from the process environment, so
//! no child (qemu-img, the libguestfs appliance, supermin, wave hooks) inherits it.

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::OnceLock;

use crate::client::Secret;
use crate::error::{Error, Result};

/// The environment variable holding the vSphere password.
pub const PASSWORD_ENV: &str = "V2K_VSPHERE_PASSWORD";
/// Default HTTPS port of vCenter and ESXi.
pub(crate) const DEFAULT_PORT: u16 = 443;
/// Largest password file read (a password is short; anything bigger is a mistake).
pub(crate) const MAX_PASSWORD_FILE: u64 = 4096;

/// A parsed `vsphere://` address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    pub user: String,
    pub host: String,
    pub port: u16,
    /// `DATACENTER/vm/FOLDER/NAME`, percent-decoded.
    pub inventory_path: String,
}

/// Decodes `%XX` escapes (so that `%40` in a user name or `%20` in a VM name work).
fn percent_decode(s: &str) -> Result<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| Error::Usage(format!("bad %-escape in {s:?}")))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| Error::Usage(format!("{s:?} is not UTF-8 once decoded")))
}

impl Address {
    /// Whether `s` looks like a vSphere address (so a caller can route it).
    pub fn is_vsphere(s: &str) -> bool {
        s.starts_with("vsphere://")
    }

    pub fn parse(s: &str) -> Result<Address> {
        let usage = |why: &str| {
            Error::Usage(format!(
                "{why}: expected vsphere://USER@HOST[:PORT]/DATACENTER/vm/FOLDER/NAME"
            ))
        };
        let rest = s
            .strip_prefix("vsphere://")
            .ok_or_else(|| usage("not a vsphere:// address"))?;
        let (authority, path) = rest
            .split_once('/')
            .ok_or_else(|| usage("no inventory path"))?;
        let (userinfo, hostport) = authority
            .rsplit_once('@')
            .ok_or_else(|| usage("no USER@ before the host"))?;
        if userinfo.contains(':') {
            // Refused outright rather than ignored: the password is now in the shell
            // history and the process list, and the user should know.
            return Err(Error::Usage(format!(
                "the address holds a password: never put it on the command line; use ${PASSWORD_ENV} or --password-file"
            )));
        }
        let user = percent_decode(userinfo)?;
        if user.is_empty() {
            return Err(usage("empty user"));
        }
        let (host, port) = if let Some(h) = hostport.strip_prefix('[') {
            let (h, after) = h
                .split_once(']')
                .ok_or_else(|| usage("unclosed [ in host"))?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| usage("bad port"))?,
                None if after.is_empty() => DEFAULT_PORT,
                None => return Err(usage("bad host")),
            };
            (h.to_string(), port)
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), p.parse().map_err(|_| usage("bad port"))?),
                None => (hostport.to_string(), DEFAULT_PORT),
            }
        };
        if host.is_empty() || port == 0 {
            return Err(usage("empty host or port 0"));
        }
        // Each component is decoded (`%20` in a URL), then written as vSphere writes
        // names in inventory paths: `%` as %25 and `/` as %2f.
        let inventory_path = path
            .trim_end_matches('/')
            .split('/')
            .map(|c| Ok(percent_decode(c)?.replace('%', "%25").replace('/', "%2f")))
            .collect::<Result<Vec<String>>>()?
            .join("/");
        let parts: Vec<&str> = inventory_path.split('/').collect();
        if parts.len() < 3 || parts.iter().any(|p| p.is_empty()) || !parts.contains(&"vm") {
            return Err(usage("the path must be DATACENTER/vm/[FOLDER/]NAME"));
        }
        Ok(Address {
            user,
            host,
            port,
            inventory_path,
        })
    }

    /// Whether the inventory path is a pattern (`*`, `?`) naming several VMs.
    pub fn is_pattern(&self) -> bool {
        self.inventory_path.contains(['*', '?'])
    }

    /// Whether an inventory path matches this address's path, `*` standing for any
    /// run of characters within one path component and `?` for one character (so
    /// `DC0/vm/apps/*` lists one folder, `DC0/vm/*/web*` one level of folders).
    pub fn matches(&self, inventory_path: &str) -> bool {
        let pat: Vec<&str> = self.inventory_path.split('/').collect();
        let got: Vec<&str> = inventory_path.split('/').collect();
        pat.len() == got.len() && pat.iter().zip(&got).all(|(p, g)| glob(p, g))
    }

    /// The address without the user, as recorded in the VM model, percent-encoded as
    /// [`Address`]'s `Display` is (a name with a space can be pasted back once the
    /// user is put in front of the host).
    pub fn display_without_user(&self) -> String {
        format!("vsphere://{}", self.display_after_user())
    }

    /// `HOST:PORT/PATH`, the host bracketed when it is an IPv6 address and each path
    /// component percent-encoded so that [`Address::parse`] reads it back unchanged.
    fn display_after_user(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        format!(
            "{host}:{}/{}",
            self.port,
            encode_inventory_path(&self.inventory_path)
        )
    }
}

/// An inventory path as the path of a `vsphere://` address: each component
/// percent-encoded so that [`Address::parse`] reads it back unchanged.
pub(crate) fn encode_inventory_path(inventory_path: &str) -> String {
    inventory_path
        .split('/')
        .map(|c| {
            // The path holds names as vSphere writes them (`%25`, `%2f`): back to the
            // name itself, then into the URL's escaping.
            let name = percent_decode(c).unwrap_or_else(|_| c.to_string());
            percent_encode(&name, PATH_SAFE)
        })
        .collect::<Vec<String>>()
        .join("/")
}

/// Bytes written as they are in a path component besides letters and digits: RFC
/// 3986's unreserved marks, and `*` and `?` so that a pattern stays readable (parse
/// decodes `%2A` to `*` all the same).
const PATH_SAFE: &[u8] = b"-._~*?!$&'()+,;=:@";
/// In the user name only RFC 3986's unreserved marks: `@` and `:` must be escaped.
const USER_SAFE: &[u8] = b"-._~";

/// `%XX`-escapes every byte of `s` but ASCII letters, digits and `safe`.
fn percent_encode(s: &str, safe: &[u8]) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || safe.contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `vsphere://USER@HOST:PORT/PATH`, percent-encoded: what it prints parses back to the
/// same address, so a printed source can be pasted into a command or a wave plan.
impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "vsphere://{}@{}",
            percent_encode(&self.user, USER_SAFE),
            self.display_after_user()
        )
    }
}

/// `*` and `?` matching of one path component, iteratively (no recursion, so a
/// pattern of many stars cannot blow the stack).
fn glob(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// The password taken out of the environment by [`take_password_from_env`] (`None`
/// inside: the variable was unset or empty).
static ENV_PASSWORD: OnceLock<Option<Secret>> = OnceLock::new();

/// Reads [`PASSWORD_ENV`] once and removes it from the process environment, so that
/// children never inherit it; [`password`] then answers from the copy kept here.
/// Call it at the start of `main`, while the process has a single thread: changing
/// the environment races with any other thread reading it (that is why
/// `remove_var` is `unsafe` from edition 2024 on; this workspace is edition 2021).
pub fn take_password_from_env() {
    let value = std::env::var(PASSWORD_ENV).ok().filter(|v| !v.is_empty());
    std::env::remove_var(PASSWORD_ENV);
    let _ = ENV_PASSWORD.set(value.map(Secret::new));
}

/// The password: from `file` when given (which must be a regular file readable by
/// its owner only), else from [`PASSWORD_ENV`].
pub fn password(file: Option<&Path>) -> Result<Secret> {
    if let Some(p) = file {
        // Never blocks on a FIFO; anything but a regular file is refused here.
        let f = v2k_untrusted::file::open(p).map_err(|e| Error::Io {
            path: p.to_path_buf(),
            what: "opening the password file".into(),
            source: e,
        })?;
        let meta = f.metadata().map_err(|e| Error::Io {
            path: p.to_path_buf(),
            what: "reading metadata of the password file".into(),
            source: e,
        })?;
        if !meta.is_file() {
            return Err(Error::Usage(format!("{}: not a regular file", p.display())));
        }
        if meta.mode() & 0o077 != 0 {
            return Err(Error::Usage(format!(
                "{}: mode {:04o} lets others read the password; chmod 600 it",
                p.display(),
                meta.mode() & 0o7777
            )));
        }
        if meta.len() > MAX_PASSWORD_FILE {
            return Err(Error::Usage(format!(
                "{}: over {MAX_PASSWORD_FILE} bytes: not a password file",
                p.display()
            )));
        }
        let mut s = String::new();
        f.take(MAX_PASSWORD_FILE)
            .read_to_string(&mut s)
            .map_err(|e| Error::Io {
                path: p.to_path_buf(),
                what: "reading the password file".into(),
                source: e,
            })?;
        let line = s.lines().next().unwrap_or_default();
        if line.is_empty() {
            return Err(Error::Usage(format!("{}: empty password", p.display())));
        }
        return Ok(Secret::new(line));
    }
    // A library caller that never took the variable still finds it in the environment.
    let env = match ENV_PASSWORD.get() {
        Some(taken) => taken.clone(),
        None => std::env::var(PASSWORD_ENV)
            .ok()
            .filter(|v| !v.is_empty())
            .map(Secret::new),
    };
    match env {
        Some(v) => Ok(v),
        None => Err(Error::Usage(format!(
            "no vSphere password: set ${PASSWORD_ENV} or give --password-file (mode 0600)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn parses_addresses() {
        let a = Address::parse(
            "vsphere://migrator%40vsphere.local@vc.example:8443/DC0/vm/apps/web%2001",
        )
        .unwrap();
        assert_eq!(a.user, "migrator@vsphere.local");
        assert_eq!((a.host.as_str(), a.port), ("vc.example", 8443));
        assert_eq!(a.inventory_path, "DC0/vm/apps/web 01");
        assert_eq!(
            a.display_without_user(),
            "vsphere://vc.example:8443/DC0/vm/apps/web%2001"
        );
        // A `/` inside a VM name, written %2F in the URL, stays inside its component.
        let a = Address::parse("vsphere://u@vc/DC0/vm/a%2Fb").unwrap();
        assert_eq!(a.inventory_path, "DC0/vm/a%2fb");
        let a = Address::parse("vsphere://root@[::1]/DC0/vm/x").unwrap();
        assert_eq!((a.host.as_str(), a.port), ("::1", 443));
    }

    #[test]
    fn a_printed_address_parses_back_to_itself() {
        for s in [
            "vsphere://migrator%40vsphere.local@vc.example:8443/DC0/vm/apps/web%2001",
            "vsphere://u@vc/DC0/vm/a%2Fb",
            "vsphere://u@vc/DC0/vm/100%25%20sure",
            "vsphere://root@[::1]:444/DC%200/vm/x",
            "vsphere://r%3Aoot@vc/DC0/vm/caf%C3%A9%20%23%3F",
            "vsphere://u@vc/DC0/vm/apps/web*",
        ] {
            let a = Address::parse(s).unwrap();
            let shown = a.to_string();
            assert!(!shown.contains(' '), "{shown}");
            assert_eq!(Address::parse(&shown).unwrap(), a, "{s} printed as {shown}");
            let without = a.display_without_user();
            let back = without.replacen("vsphere://", &format!("vsphere://{}@", "u"), 1);
            assert_eq!(
                Address::parse(&back).unwrap().inventory_path,
                a.inventory_path,
                "{without}"
            );
        }
        let a = Address::parse("vsphere://u@vc/DC0/vm/web%2001").unwrap();
        assert_eq!(a.to_string(), "vsphere://u@vc:443/DC0/vm/web%2001");
    }

    #[test]
    fn patterns_match_within_path_components() {
        let a = Address::parse("vsphere://u@vc/DC0/vm/apps/web*").unwrap();
        assert!(a.is_pattern());
        assert!(a.matches("DC0/vm/apps/web01"));
        assert!(a.matches("DC0/vm/apps/web"));
        assert!(!a.matches("DC0/vm/apps/db01"));
        assert!(!a.matches("DC0/vm/apps/sub/web01"));
        let a = Address::parse("vsphere://u@vc/DC0/vm/*/db?").unwrap();
        assert!(a.matches("DC0/vm/x/db1") && !a.matches("DC0/vm/x/db12"));
        assert!(!Address::parse("vsphere://u@vc/DC0/vm/x")
            .unwrap()
            .is_pattern());
        assert!(glob("*a*b*c*", "xxaxxbxxcxx") && !glob("*a*b*c*", "xxaxxcxxbxx"));
    }

    #[test]
    fn refuses_passwords_and_malformed_addresses() {
        let e = Address::parse("vsphere://root:hunter2@vc/DC0/vm/x").unwrap_err();
        assert!(e.to_string().contains("password"));
        assert!(!e.to_string().contains("hunter2"));
        for bad in [
            "https://root@vc/DC0/vm/x",
            "vsphere://vc/DC0/vm/x",
            "vsphere://root@vc",
            "vsphere://root@vc/DC0/x",
            "vsphere://root@vc:0/DC0/vm/x",
            "vsphere://root@vc:http/DC0/vm/x",
            "vsphere://root@vc/DC0//vm/x",
            "vsphere://root@vc/DC0/vm/%zz",
        ] {
            assert!(Address::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn password_files_must_be_private() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("pw");
        std::fs::write(&f, "s3cret\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = password(Some(&f)).unwrap_err();
        assert!(e.to_string().contains("chmod 600") && !e.to_string().contains("s3cret"));
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(password(Some(&f)).unwrap().expose(), "s3cret");
        std::fs::write(&f, "").unwrap();
        assert!(password(Some(&f)).is_err());
        assert!(password(Some(d.path())).is_err());
    }
}
