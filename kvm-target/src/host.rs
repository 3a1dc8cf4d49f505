//! The destination host's topology — its NUMA cells, each with its CPUs, memory and
//! hugepages — which the VMware tuning is mapped onto ([`crate::tuning`]). Read from
//! libvirt's `virsh capabilities` XML (a file, or `virsh -c URI capabilities` for a
//! remote host), or, for the local host when libvirt does not answer, from `/sys`.
//!
//! A capabilities file comes from the user, not from the VM, but it is still parsed
//! as untrusted: bounded size, no DOCTYPE, bounded cell and CPU counts.

use std::path::{Path, PathBuf};

use quick_xml::events::Event;
use serde::{Deserialize, Serialize};

/// The largest capabilities document read: a 1,024-CPU host's is about 300 KiB.
const MAX_CAPABILITIES_BYTES: u64 = 8 << 20;

/// Most NUMA cells kept: Linux's MAX_NUMNODES is at most 1,024.
const MAX_CELLS: usize = 1024;

/// Most host CPUs kept: Linux's NR_CPUS is at most 8,192.
const MAX_HOST_CPUS: usize = 8192;

/// Where the destination's topology comes from (`--host-topology FILE|URI`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "at", rename_all = "kebab-case")]
pub enum HostSource {
    /// This machine: `virsh -c qemu:///system capabilities`, else `/sys`.
    Local,
    /// A saved `virsh capabilities` document.
    File(PathBuf),
    /// A libvirt URI (`qemu+ssh://root@kvm01/system`): `virsh -c URI capabilities`.
    Uri(String),
}

impl HostSource {
    /// `FILE` or `URI` as given to `--host-topology`: anything with `://` is a URI.
    pub fn parse(s: &str) -> Result<HostSource, HostError> {
        if s.is_empty() || s.starts_with('-') {
            return Err(HostError::BadSource(s.to_string()));
        }
        Ok(if s.contains("://") {
            HostSource::Uri(s.to_string())
        } else {
            HostSource::File(PathBuf::from(s))
        })
    }

    /// Reads the topology.
    pub fn load(&self) -> Result<HostTopology, HostError> {
        match self {
            HostSource::File(p) => {
                let text = v2k_untrusted::file::read_to_string(
                    p,
                    MAX_CAPABILITIES_BYTES,
                    "capabilities document",
                )
                .map_err(|source| HostError::Read {
                    path: p.clone(),
                    source,
                })?;
                HostTopology::from_capabilities(&text, &p.display().to_string())
            }
            HostSource::Uri(uri) => virsh_capabilities(uri),
            HostSource::Local => {
                virsh_capabilities(LOCAL_URI).or_else(|_| from_sys(Path::new("/sys")))
            }
        }
    }
}

/// The local libvirt v2k's other stages use.
const LOCAL_URI: &str = "qemu:///system";

/// Why the host's topology could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("--host-topology {0:?}: expected a capabilities file or a libvirt URI")]
    BadSource(String),
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("virsh -c {uri} capabilities: {detail}")]
    Virsh { uri: String, detail: String },
    #[error("{from}: not a libvirt capabilities document: {detail}")]
    Capabilities { from: String, detail: String },
}

/// One NUMA cell of the host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct HostCell {
    pub id: u32,
    pub memory_kib: u64,
    /// Its CPUs (the host's numbering), ascending.
    pub cpus: Vec<u32>,
    /// Hugepages reserved in this cell: (page size in KiB, count). The base page
    /// size is left out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hugepages: Vec<(u64, u64)>,
}

/// The destination host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct HostTopology {
    /// Where it was read (a file, a URI, `/sys`): said in the report.
    pub source: String,
    pub cells: Vec<HostCell>,
}

/// The base page size, which capabilities also lists under `<pages>`.
const BASE_PAGE_KIB: u64 = 4;

impl HostTopology {
    /// Every host CPU, ascending.
    pub fn cpus(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self
            .cells
            .iter()
            .flat_map(|c| c.cpus.iter().copied())
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// The host's memory in MiB.
    pub fn memory_mib(&self) -> u64 {
        self.cells
            .iter()
            .fold(0u64, |a, c| a.saturating_add(c.memory_kib))
            / 1024
    }

    /// The cell ids, ascending.
    pub fn node_ids(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self.cells.iter().map(|c| c.id).collect();
        v.sort_unstable();
        v
    }

    /// Hugepages reserved on the cells `nodes` (all cells when empty), per page
    /// size: (size KiB, total count), ascending by size.
    pub fn hugepages(&self, nodes: &[u32]) -> Vec<(u64, u64)> {
        let mut out: std::collections::BTreeMap<u64, u64> = Default::default();
        for c in self
            .cells
            .iter()
            .filter(|c| nodes.is_empty() || nodes.contains(&c.id))
        {
            for &(size, n) in &c.hugepages {
                let e = out.entry(size).or_default();
                *e = e.saturating_add(n);
            }
        }
        out.into_iter().collect()
    }

    /// Parses `virsh capabilities` output; `source` names it in errors.
    pub fn from_capabilities(text: &str, source: &str) -> Result<HostTopology, HostError> {
        let bad = |detail: String| HostError::Capabilities {
            from: source.to_string(),
            detail,
        };
        if text.len() as u64 > MAX_CAPABILITIES_BYTES {
            return Err(bad("larger than 8 MiB".into()));
        }
        let mut reader = quick_xml::Reader::from_str(text);
        reader.config_mut().trim_text(true);
        let mut path: Vec<String> = Vec::new();
        let mut cells: Vec<HostCell> = Vec::new();
        let mut cpus = 0usize;
        // The `size` of the `<pages>` element being read (in a cell).
        let mut page_size: Option<u64> = None;
        let mut in_memory = false;
        let attr = |e: &quick_xml::events::BytesStart, name: &[u8]| -> Option<String> {
            e.attributes()
                .flatten()
                .find(|a| a.key.as_ref() == name)
                .and_then(|a| a.unescape_value().ok().map(|v| v.into_owned()))
        };
        loop {
            let ev = reader
                .read_event()
                .map_err(|e| bad(format!("at byte {}: {e}", reader.buffer_position())))?;
            match ev {
                Event::DocType(_) => return Err(bad("a DOCTYPE".into())),
                Event::Start(ref e) | Event::Empty(ref e) => {
                    let name = String::from_utf8_lossy(e.name().as_ref()).into_owned();
                    let under = |p: &[&str]| {
                        path.len() == p.len() && path.iter().zip(p).all(|(a, b)| a == b)
                    };
                    let cell_path = ["capabilities", "host", "topology", "cells"];
                    if name == "cell" && under(&cell_path) {
                        if cells.len() >= MAX_CELLS {
                            return Err(bad(format!("more than {MAX_CELLS} cells")));
                        }
                        let id = attr(e, b"id")
                            .and_then(|v| v.parse().ok())
                            .ok_or_else(|| bad("a <cell> without a numeric id".into()))?;
                        cells.push(HostCell {
                            id,
                            ..HostCell::default()
                        });
                    } else if path.len() == 5 && path[..4] == cell_path && path[4] == "cell" {
                        if name == "memory" {
                            let unit = attr(e, b"unit").unwrap_or_else(|| "KiB".into());
                            if unit != "KiB" {
                                return Err(bad(format!("cell memory in {unit:?}, not KiB")));
                            }
                            in_memory = matches!(ev, Event::Start(_));
                        } else if name == "pages" {
                            let size = attr(e, b"size").and_then(|v| v.parse::<u64>().ok());
                            let unit = attr(e, b"unit").unwrap_or_else(|| "KiB".into());
                            if unit != "KiB" {
                                return Err(bad(format!("page size in {unit:?}, not KiB")));
                            }
                            page_size = size.filter(|_| matches!(ev, Event::Start(_)));
                        }
                    } else if name == "cpu"
                        && path.len() == 6
                        && path[..4] == cell_path
                        && path[5] == "cpus"
                    {
                        cpus += 1;
                        if cpus > MAX_HOST_CPUS {
                            return Err(bad(format!("more than {MAX_HOST_CPUS} CPUs")));
                        }
                        let id = attr(e, b"id")
                            .and_then(|v| v.parse().ok())
                            .ok_or_else(|| bad("a <cpu> without a numeric id".into()))?;
                        if let Some(c) = cells.last_mut() {
                            c.cpus.push(id);
                        }
                    }
                    if matches!(ev, Event::Start(_)) {
                        if path.len() > 32 {
                            return Err(bad("nested deeper than 32".into()));
                        }
                        path.push(name);
                    }
                }
                Event::End(_) => {
                    path.pop();
                    in_memory = false;
                    page_size = None;
                }
                Event::Text(t) => {
                    let t = t.unescape().map_err(|e| bad(e.to_string()))?;
                    let n = || {
                        t.trim()
                            .parse::<u64>()
                            .map_err(|_| bad(format!("{t:?} is not a number")))
                    };
                    if in_memory {
                        if let Some(c) = cells.last_mut() {
                            c.memory_kib = n()?;
                        }
                    } else if let Some(size) = page_size {
                        let count = n()?;
                        if let Some(c) = cells.last_mut() {
                            if size > BASE_PAGE_KIB && count > 0 {
                                c.hugepages.push((size, count));
                            }
                        }
                    }
                }
                Event::Eof => break,
                _ => {}
            }
        }
        for c in &mut cells {
            c.cpus.sort_unstable();
            c.cpus.dedup();
        }
        let t = HostTopology {
            source: source.to_string(),
            cells,
        };
        if t.cpus().is_empty() {
            return Err(bad("no host CPUs in <host><topology><cells>".into()));
        }
        Ok(t)
    }
}

/// `virsh -c URI capabilities`.
fn virsh_capabilities(uri: &str) -> Result<HostTopology, HostError> {
    let o = std::process::Command::new("virsh")
        .args(["-q", "-c", uri, "capabilities"])
        .output()
        .map_err(|e| HostError::Virsh {
            uri: uri.into(),
            detail: e.to_string(),
        })?;
    if !o.status.success() {
        return Err(HostError::Virsh {
            uri: uri.into(),
            detail: String::from_utf8_lossy(&o.stderr).trim().to_string(),
        });
    }
    if o.stdout.len() as u64 > MAX_CAPABILITIES_BYTES {
        return Err(HostError::Virsh {
            uri: uri.into(),
            detail: "answer larger than 8 MiB".into(),
        });
    }
    HostTopology::from_capabilities(
        &String::from_utf8_lossy(&o.stdout),
        &format!("virsh -c {uri} capabilities"),
    )
}

/// A CPU list as the kernel writes it (`0-3,6`); `None` when it is not one.
pub(crate) fn parse_cpu_list(s: &str) -> Option<Vec<u32>> {
    let mut out = Vec::new();
    for part in s.trim().split(',').filter(|p| !p.is_empty()) {
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a.parse::<u32>().ok()?, b.parse::<u32>().ok()?),
            None => {
                let n = part.parse().ok()?;
                (n, n)
            }
        };
        if b < a || out.len() + (b - a) as usize >= MAX_HOST_CPUS {
            return None;
        }
        out.extend(a..=b);
    }
    Some(out)
}

/// The local host from `/sys` (`root`, for tests): each
/// `devices/system/node/nodeN` with its `cpulist`, `meminfo` and hugepages; a
/// kernel without NUMA nodes is one cell of every online CPU.
pub(crate) fn from_sys(root: &Path) -> Result<HostTopology, HostError> {
    let read = |p: PathBuf| {
        v2k_untrusted::file::read_to_string(&p, 1 << 20, "sysfs file")
            .map_err(|source| HostError::Read { path: p, source })
    };
    let bad = |p: &Path, detail: &str| HostError::Capabilities {
        from: p.display().to_string(),
        detail: detail.into(),
    };
    let hugepages = |dir: PathBuf| -> Vec<(u64, u64)> {
        let mut v = Vec::new();
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let size = name
                .strip_prefix("hugepages-")
                .and_then(|s| s.strip_suffix("kB"))
                .and_then(|s| s.parse::<u64>().ok());
            let count = read(e.path().join("nr_hugepages"))
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok());
            if let (Some(size), Some(count)) = (size, count) {
                if count > 0 {
                    v.push((size, count));
                }
            }
        }
        v.sort_unstable();
        v
    };
    let nodes = root.join("devices/system/node");
    let mut cells = Vec::new();
    for e in std::fs::read_dir(&nodes).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(id) = name
            .strip_prefix("node")
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let cpus = parse_cpu_list(&read(e.path().join("cpulist"))?)
            .ok_or_else(|| bad(&e.path(), "cpulist is not a CPU list"))?;
        // `Node 0 MemTotal:       24683772 kB`
        let memory_kib = read(e.path().join("meminfo"))?
            .lines()
            .find(|l| l.contains("MemTotal:"))
            .and_then(|l| l.split_whitespace().rev().nth(1))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        cells.push(HostCell {
            id,
            memory_kib,
            cpus,
            hugepages: hugepages(e.path().join("hugepages")),
        });
        if cells.len() > MAX_CELLS {
            return Err(bad(&nodes, "more than 1024 nodes"));
        }
    }
    if cells.is_empty() {
        let online = root.join("devices/system/cpu/online");
        let cpus =
            parse_cpu_list(&read(online.clone())?).ok_or_else(|| bad(&online, "not a CPU list"))?;
        let memory_kib = read(PathBuf::from("/proc/meminfo"))?
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        cells.push(HostCell {
            id: 0,
            memory_kib,
            cpus,
            hugepages: hugepages(root.join("kernel/mm/hugepages")),
        });
    }
    cells.sort_by_key(|c| c.id);
    Ok(HostTopology {
        source: root.display().to_string(),
        cells,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two cells as `virsh capabilities` writes them (trimmed): the `<pages>` under
    /// `<host><cpu>` list supported sizes, the ones in a cell count reserved pages.
    pub(crate) const TWO_CELLS: &str = r#"<capabilities>
  <host>
    <cpu><arch>x86_64</arch><topology sockets='2' dies='1' cores='4' threads='1'/>
      <pages unit='KiB' size='4'/><pages unit='KiB' size='2048'/></cpu>
    <topology>
      <cells num='2'>
        <cell id='0'>
          <memory unit='KiB'>8388608</memory>
          <pages unit='KiB' size='4'>2097152</pages>
          <pages unit='KiB' size='2048'>512</pages>
          <pages unit='KiB' size='1048576'>0</pages>
          <cpus num='4'>
            <cpu id='0' socket_id='0' core_id='0' siblings='0'/>
            <cpu id='1' socket_id='0' core_id='1' siblings='1'/>
            <cpu id='2' socket_id='0' core_id='2' siblings='2'/>
            <cpu id='3' socket_id='0' core_id='3' siblings='3'/>
          </cpus>
        </cell>
        <cell id='1'>
          <memory unit='KiB'>8388608</memory>
          <pages unit='KiB' size='2048'>0</pages>
          <cpus num='4'>
            <cpu id='4'/><cpu id='5'/><cpu id='6'/><cpu id='7'/>
          </cpus>
        </cell>
      </cells>
    </topology>
  </host>
</capabilities>"#;

    #[test]
    fn reads_cells_cpus_memory_and_reserved_hugepages() {
        let t = HostTopology::from_capabilities(TWO_CELLS, "caps.xml").unwrap();
        assert_eq!(t.node_ids(), [0, 1]);
        assert_eq!(t.cpus(), (0..8).collect::<Vec<u32>>());
        assert_eq!(t.cells[0].cpus, [0, 1, 2, 3]);
        assert_eq!(t.memory_mib(), 16384);
        assert_eq!(t.cells[0].hugepages, [(2048, 512)]);
        assert!(t.cells[1].hugepages.is_empty());
        assert_eq!(t.hugepages(&[]), [(2048, 512)]);
        assert_eq!(t.hugepages(&[1]), []);
    }

    #[test]
    fn refuses_what_is_not_a_capabilities_document() {
        for (doc, want) in [
            ("<capabilities/>", "no host CPUs"),
            ("<!DOCTYPE x><capabilities/>", "DOCTYPE"),
            (
                "<capabilities><host><topology><cells><cell id='x'/></cells></topology></host></capabilities>",
                "numeric id",
            ),
            (
                "<capabilities><host><topology><cells><cell id='0'><memory unit='GiB'>1</memory></cell></cells></topology></host></capabilities>",
                "not KiB",
            ),
            ("<capabilities><host>", "no host CPUs"),
        ] {
            let e = HostTopology::from_capabilities(doc, "c.xml").unwrap_err().to_string();
            assert!(e.starts_with("c.xml: ") && e.contains(want), "{doc}: {e}");
        }
    }

    #[test]
    fn a_source_is_a_uri_when_it_has_a_scheme() {
        assert_eq!(
            HostSource::parse("qemu+ssh://root@kvm01/system").unwrap(),
            HostSource::Uri("qemu+ssh://root@kvm01/system".into())
        );
        assert_eq!(
            HostSource::parse("caps.xml").unwrap(),
            HostSource::File("caps.xml".into())
        );
        assert!(HostSource::parse("-c").is_err());
        assert!(HostSource::parse("").is_err());
    }

    #[test]
    fn parses_kernel_cpu_lists() {
        assert_eq!(parse_cpu_list("0-3,6\n"), Some(vec![0, 1, 2, 3, 6]));
        assert_eq!(parse_cpu_list(""), Some(vec![]));
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list("0-4294967295"), None);
        assert_eq!(parse_cpu_list("a"), None);
    }

    #[test]
    fn reads_a_sysfs_tree() {
        let d = tempfile::tempdir().unwrap();
        let n = d.path().join("devices/system/node/node1");
        std::fs::create_dir_all(n.join("hugepages/hugepages-2048kB")).unwrap();
        std::fs::write(n.join("cpulist"), "2-3\n").unwrap();
        std::fs::write(
            n.join("meminfo"),
            "Node 1 MemTotal:       2097152 kB\nNode 1 MemFree: 1 kB\n",
        )
        .unwrap();
        std::fs::write(n.join("hugepages/hugepages-2048kB/nr_hugepages"), "64\n").unwrap();
        let t = from_sys(d.path()).unwrap();
        assert_eq!(
            t.cells,
            [HostCell {
                id: 1,
                memory_kib: 2097152,
                cpus: vec![2, 3],
                hugepages: vec![(2048, 64)],
            }]
        );
    }
}
