//! Offline registry access through libguestfs' hivex calls: typed values decoded from
//! the hive's raw bytes with bounds, and a [`Hive`] handle that reads keys by path and
//! sets values only when they differ, recording every edit as a [`RegistryChange`]
//! (hive, key, value, before, after) for the conversion log.
//!
//! libguestfs holds one open hive per appliance; a [`Hive`] closes it when dropped, and
//! nothing reaches the guest's file unless [`Hive::commit`] is called, so a refusal
//! after reading a hive leaves it untouched.

use serde::{Deserialize, Serialize};

use crate::appliance::{gerr, Appliance};
use crate::error::{Error, Result};

/// Registry value types (winnt.h).
pub const REG_SZ: i64 = 1;
pub const REG_EXPAND_SZ: i64 = 2;
pub const REG_BINARY: i64 = 3;
pub const REG_DWORD: i64 = 4;
pub const REG_MULTI_SZ: i64 = 7;
pub(crate) const REG_QWORD: i64 = 11;

/// Longest value data decoded: real SYSTEM values are far below this, and the
/// libguestfs protocol caps one message at 4 MiB anyway.
pub(crate) const MAX_VALUE_BYTES: usize = 1 << 20;
/// Most strings read out of one REG_MULTI_SZ.
pub(crate) const MAX_MULTI_SZ_ITEMS: usize = 4096;
/// Most subkeys listed under one key (the Uninstall key of a busy server holds a few
/// hundred).
pub(crate) const MAX_SUBKEYS: usize = 65_536;
/// Deepest key path accepted (Windows' own limit is 512 levels).
pub const MAX_DEPTH: usize = 512;

/// A typed registry value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegValue {
    Sz(String),
    ExpandSz(String),
    Binary(Vec<u8>),
    Dword(u32),
    MultiSz(Vec<String>),
    Qword(u64),
    /// Any other type, or data that does not decode as its type says.
    Raw {
        kind: i64,
        data: Vec<u8>,
    },
}

/// UTF-16LE with a terminating NUL.
pub fn utf16z(s: &str) -> Vec<u8> {
    s.encode_utf16()
        .chain(std::iter::once(0))
        .flat_map(u16::to_le_bytes)
        .collect()
}

/// Decodes UTF-16LE up to the first NUL; `None` when the length is odd or a surrogate
/// is unpaired.
fn from_utf16(data: &[u8]) -> Option<String> {
    if !data.len().is_multiple_of(2) {
        // Windows itself sometimes stores an odd trailing byte after the NUL.
        return from_utf16(&data[..data.len() - 1]);
    }
    let units: Vec<u16> = data
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|u| *u != 0)
        .collect();
    String::from_utf16(&units).ok()
}

impl RegValue {
    pub fn kind(&self) -> i64 {
        match self {
            RegValue::Sz(_) => REG_SZ,
            RegValue::ExpandSz(_) => REG_EXPAND_SZ,
            RegValue::Binary(_) => REG_BINARY,
            RegValue::Dword(_) => REG_DWORD,
            RegValue::MultiSz(_) => REG_MULTI_SZ,
            RegValue::Qword(_) => REG_QWORD,
            RegValue::Raw { kind, .. } => *kind,
        }
    }

    /// The bytes stored in the hive.
    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            RegValue::Sz(s) | RegValue::ExpandSz(s) => utf16z(s),
            RegValue::Binary(b) => b.clone(),
            RegValue::Dword(v) => v.to_le_bytes().to_vec(),
            RegValue::Qword(v) => v.to_le_bytes().to_vec(),
            RegValue::MultiSz(items) => {
                let mut out = Vec::new();
                for i in items {
                    out.extend(utf16z(i));
                }
                out.extend([0, 0]);
                out
            }
            RegValue::Raw { data, .. } => data.clone(),
        }
    }

    /// Decodes raw hive data; oversize data is refused by the caller before this.
    pub fn from_raw(kind: i64, data: &[u8]) -> RegValue {
        let raw = || RegValue::Raw {
            kind,
            data: data.to_vec(),
        };
        match kind {
            REG_SZ => from_utf16(data).map(RegValue::Sz).unwrap_or_else(raw),
            REG_EXPAND_SZ => from_utf16(data).map(RegValue::ExpandSz).unwrap_or_else(raw),
            REG_BINARY => RegValue::Binary(data.to_vec()),
            // A DWORD's data is exactly 4 bytes; anything else is kept raw.
            REG_DWORD if data.len() == 4 => {
                RegValue::Dword(u32::from_le_bytes(data.try_into().expect("4 bytes")))
            }
            REG_QWORD if data.len() == 8 => {
                RegValue::Qword(u64::from_le_bytes(data.try_into().expect("8 bytes")))
            }
            REG_MULTI_SZ => {
                let even = &data[..data.len() & !1];
                let units: Vec<u16> = even
                    .chunks_exact(2)
                    .map(|c| u16::from_le_bytes([c[0], c[1]]))
                    .collect();
                let mut items = Vec::new();
                for part in units.split(|u| *u == 0) {
                    if part.is_empty() {
                        // An empty string ends the list (the final double NUL).
                        break;
                    }
                    if items.len() == MAX_MULTI_SZ_ITEMS {
                        return raw();
                    }
                    match String::from_utf16(part) {
                        Ok(s) => items.push(s),
                        Err(_) => return raw(),
                    }
                }
                RegValue::MultiSz(items)
            }
            _ => raw(),
        }
    }

    /// The value as text, if it is a string type (the first item of a multi-string).
    pub fn as_str(&self) -> Option<&str> {
        match self {
            RegValue::Sz(s) | RegValue::ExpandSz(s) => Some(s),
            RegValue::MultiSz(v) => v.first().map(String::as_str),
            _ => None,
        }
    }

    pub(crate) fn as_dword(&self) -> Option<u32> {
        match self {
            RegValue::Dword(v) => Some(*v),
            _ => None,
        }
    }

    /// `REG_DWORD 0x00000001`, `REG_SZ "SCSI miniport"`: for logs and messages (guest
    /// text is made printable and capped).
    pub fn display(&self) -> String {
        let q = |s: &str| format!("{:?}", crate::edit::printable(s));
        match self {
            RegValue::Sz(s) => format!("REG_SZ {}", q(s)),
            RegValue::ExpandSz(s) => format!("REG_EXPAND_SZ {}", q(s)),
            RegValue::Dword(v) => format!("REG_DWORD {v:#010x}"),
            RegValue::Qword(v) => format!("REG_QWORD {v:#018x}"),
            RegValue::MultiSz(items) => {
                let parts: Vec<String> = items.iter().map(|s| q(s)).collect();
                format!("REG_MULTI_SZ [{}]", parts.join(", "))
            }
            RegValue::Binary(b) => format!("REG_BINARY {}", hex(b)),
            RegValue::Raw { kind, data } => format!("type {kind} {}", hex(data)),
        }
    }
}

/// Hex bytes, the first 64 then an ellipsis.
fn hex(b: &[u8]) -> String {
    let mut s: String = b.iter().take(64).map(|x| format!("{x:02x}")).collect();
    if b.len() > 64 {
        s.push_str(&format!("...({} bytes)", b.len()));
    }
    s
}

/// One value changed in a hive: what the conversion log records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct RegistryChange {
    /// `SYSTEM` or `SOFTWARE`.
    pub hive: String,
    /// The key under the hive root, backslash-separated (`ControlSet001\Services\viostor`).
    pub key: String,
    /// The value name; empty for the key's default value.
    pub value: String,
    /// The old value (`REG_DWORD 0x00000003`), absent when the value did not exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<String>,
    pub after: String,
}

/// An open hive inside the appliance.
pub struct Hive<'a> {
    app: &'a Appliance,
    /// `SYSTEM` or `SOFTWARE`, for the log.
    pub name: String,
    /// The guest path of the hive file.
    pub path: String,
    root: i64,
    open: bool,
    /// Node handles by lower-cased path. Under TCG every hivex call is a round trip
    /// of tens of milliseconds to the appliance, and the edits share long prefixes;
    /// hivex never moves an `nk` record, so a handle stays valid after edits.
    nodes: std::collections::HashMap<String, i64>,
    /// Every value set so far.
    pub changes: Vec<RegistryChange>,
}

impl Drop for Hive<'_> {
    fn drop(&mut self) {
        if self.open {
            // Closing without commit discards every change.
            let _ = self.app.g.hivex_close();
        }
    }
}

impl<'a> Hive<'a> {
    /// Opens the hive at guest path `path` (named `name` in the log). A hive hivex
    /// cannot parse is a refusal naming the file: nothing was changed yet.
    pub fn open(app: &'a Appliance, name: &str, path: &str, write: bool) -> Result<Hive<'a>> {
        app.g
            .hivex_open(
                path,
                guestfs::HivexOpenOptArgs {
                    verbose: None,
                    debug: None,
                    write: Some(write),
                    unsafe_: None,
                },
            )
            .map_err(|e| Error::Hive {
                path: path.to_string(),
                message: format!(
                    "cannot be opened ({}): the registry hive is damaged or not a hive",
                    super::gtext(e)
                ),
            })?;
        let mut h = Hive {
            app,
            name: name.to_string(),
            path: path.to_string(),
            root: 0,
            open: true,
            nodes: std::collections::HashMap::new(),
            changes: Vec::new(),
        };
        h.root = app.g.hivex_root().map_err(|e| Error::Hive {
            path: path.to_string(),
            message: format!("has no valid root key ({})", super::gtext(e)),
        })?;
        Ok(h)
    }

    pub fn root(&self) -> i64 {
        self.root
    }

    /// The node at `path` under the root (case-insensitive, as Windows), if present.
    pub fn node(&mut self, path: &[&str]) -> Result<Option<i64>> {
        self.walk(path, false)
    }

    /// Walks `path` from the longest cached prefix; creates missing keys when `create`
    /// (hivex adds one child per call).
    fn walk(&mut self, path: &[&str], create: bool) -> Result<Option<i64>> {
        if path.len() > MAX_DEPTH {
            return Err(Error::Input(format!(
                "registry path deeper than {MAX_DEPTH}"
            )));
        }
        let mut n = self.root;
        let mut key = String::new();
        for part in path {
            if !key.is_empty() {
                key.push('\\');
            }
            key.push_str(&part.to_lowercase());
            if let Some(&c) = self.nodes.get(&key) {
                n = c;
                continue;
            }
            let mut c = self
                .app
                .g
                .hivex_node_get_child(n, part)
                .map_err(gerr(format!(
                    "hivex_node_get_child {part} in {}",
                    self.path
                )))?;
            if c == 0 {
                if !create {
                    return Ok(None);
                }
                c = self
                    .app
                    .g
                    .hivex_node_add_child(n, part)
                    .map_err(gerr(format!(
                        "hivex_node_add_child {part} in {}",
                        self.path
                    )))?;
            }
            self.nodes.insert(key.clone(), c);
            n = c;
        }
        Ok(Some(n))
    }

    /// Child names of a node, capped.
    pub fn subkeys(&self, node: i64) -> Result<Vec<(String, i64)>> {
        let kids = self
            .app
            .g
            .hivex_node_children(node)
            .map_err(gerr(format!("hivex_node_children in {}", self.path)))?;
        if kids.len() > MAX_SUBKEYS {
            return Err(Error::Hive {
                path: self.path.clone(),
                message: format!("a key has {} subkeys (limit {MAX_SUBKEYS})", kids.len()),
            });
        }
        let mut out = Vec::with_capacity(kids.len());
        for k in kids {
            let name = self
                .app
                .g
                .hivex_node_name(k.hivex_node_h)
                .map_err(gerr(format!("hivex_node_name in {}", self.path)))?;
            out.push((name, k.hivex_node_h));
        }
        Ok(out)
    }

    /// A value of a node, decoded; `None` when absent.
    pub(crate) fn value_of(&self, node: i64, name: &str) -> Result<Option<RegValue>> {
        let v = self
            .app
            .g
            .hivex_node_get_value(node, name)
            .map_err(gerr(format!(
                "hivex_node_get_value {name} in {}",
                self.path
            )))?;
        if v == 0 {
            return Ok(None);
        }
        let kind = self
            .app
            .g
            .hivex_value_type(v)
            .map_err(gerr(format!("hivex_value_type {name} in {}", self.path)))?;
        let data = self
            .app
            .g
            .hivex_value_value(v)
            .map_err(gerr(format!("hivex_value_value {name} in {}", self.path)))?;
        if data.len() > MAX_VALUE_BYTES {
            return Err(Error::Hive {
                path: self.path.clone(),
                message: format!(
                    "value {name} holds {} bytes (limit {MAX_VALUE_BYTES})",
                    data.len()
                ),
            });
        }
        Ok(Some(RegValue::from_raw(kind, &data)))
    }

    /// Every value of a node (name, decoded value), capped like subkeys.
    pub fn values(&self, node: i64) -> Result<Vec<(String, RegValue)>> {
        let vals = self
            .app
            .g
            .hivex_node_values(node)
            .map_err(gerr(format!("hivex_node_values in {}", self.path)))?;
        if vals.len() > MAX_SUBKEYS {
            return Err(Error::Hive {
                path: self.path.clone(),
                message: format!("a key has {} values (limit {MAX_SUBKEYS})", vals.len()),
            });
        }
        let mut out = Vec::with_capacity(vals.len());
        for v in vals {
            let name = self
                .app
                .g
                .hivex_value_key(v.hivex_value_h)
                .map_err(gerr(format!("hivex_value_key in {}", self.path)))?;
            if let Some(val) = self.value_of(node, &name)? {
                out.push((name, val));
            }
        }
        Ok(out)
    }

    /// The value at `path` + `name`, if both exist.
    pub fn get(&mut self, path: &[&str], name: &str) -> Result<Option<RegValue>> {
        match self.node(path)? {
            Some(n) => self.value_of(n, name),
            None => Ok(None),
        }
    }

    /// A string value (trimmed), if present and a string.
    pub(crate) fn get_str(&mut self, path: &[&str], name: &str) -> Result<Option<String>> {
        Ok(self
            .get(path, name)?
            .and_then(|v| v.as_str().map(|s| s.trim().to_string())))
    }

    pub(crate) fn get_dword(&mut self, path: &[&str], name: &str) -> Result<Option<u32>> {
        Ok(self.get(path, name)?.and_then(|v| v.as_dword()))
    }

    /// The node at `path`, creating missing keys.
    pub(crate) fn ensure(&mut self, path: &[&str]) -> Result<i64> {
        Ok(self.walk(path, true)?.unwrap_or(self.root))
    }

    /// Sets `name` under `path` to `value` when it differs, creating the key when
    /// needed; records and returns whether it changed.
    pub fn set(&mut self, path: &[&str], name: &str, value: &RegValue) -> Result<bool> {
        let before = match self.node(path)? {
            Some(n) => self.value_of(n, name)?,
            None => None,
        };
        if before.as_ref() == Some(value) {
            return Ok(false);
        }
        let node = self.ensure(path)?;
        self.app
            .g
            .hivex_node_set_value(node, name, value.kind(), &value.to_bytes())
            .map_err(gerr(format!(
                "hivex_node_set_value {}\\{name} in {}",
                path.join("\\"),
                self.path
            )))?;
        self.changes.push(RegistryChange {
            hive: self.name.clone(),
            key: path.join("\\"),
            value: name.to_string(),
            before: before.map(|b| b.display()),
            after: value.display(),
        });
        Ok(true)
    }

    /// Writes the changes to the guest's hive file (when there are any) and closes it.
    pub fn commit(mut self) -> Result<Vec<RegistryChange>> {
        if !self.changes.is_empty() {
            self.app
                .g
                .hivex_commit(None)
                .map_err(gerr(format!("hivex_commit {}", self.path)))?;
        }
        self.open = false;
        self.app
            .g
            .hivex_close()
            .map_err(gerr(format!("hivex_close {}", self.path)))?;
        Ok(std::mem::take(&mut self.changes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_type() {
        for v in [
            RegValue::Sz("SCSI miniport".into()),
            RegValue::ExpandSz("system32\\drivers\\viostor.sys".into()),
            RegValue::Dword(0x0d00_0005),
            RegValue::Qword(7),
            RegValue::MultiSz(vec!["guestor.inf_tmp".into(), "b".into()]),
            RegValue::Binary(vec![1, 0xff, 0, 0]),
        ] {
            assert_eq!(RegValue::from_raw(v.kind(), &v.to_bytes()), v);
        }
    }

    #[test]
    fn keeps_malformed_data_raw_instead_of_failing() {
        assert_eq!(
            RegValue::from_raw(REG_DWORD, &[1, 2]),
            RegValue::Raw {
                kind: REG_DWORD,
                data: vec![1, 2]
            }
        );
        // An unpaired surrogate is not a string.
        let bad = [0x00, 0xd8, 0x41, 0x00];
        assert!(matches!(
            RegValue::from_raw(REG_SZ, &bad),
            RegValue::Raw { .. }
        ));
        // Odd length and a missing terminator still decode.
        assert_eq!(
            RegValue::from_raw(REG_SZ, &[b'A', 0, b'B', 0, 0]),
            RegValue::Sz("AB".into())
        );
        assert_eq!(
            RegValue::from_raw(REG_MULTI_SZ, &[]),
            RegValue::MultiSz(Vec::new())
        );
    }

    #[test]
    fn displays_types_for_the_log() {
        assert_eq!(RegValue::Dword(1).display(), "REG_DWORD 0x00000001");
        assert_eq!(RegValue::Sz("a\u{7}b".into()).display(), "REG_SZ \"ab\"");
        assert_eq!(
            RegValue::Binary(vec![1, 0xff, 0, 0]).display(),
            "REG_BINARY 01ff0000"
        );
    }
}
