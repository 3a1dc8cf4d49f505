//! The JSON manifest written beside every output (`OUT.manifest.json`): what was
//! converted, into what, how fast, and the content hashes that prove source and
//! output hold the same disk. Schema in docs/schemas.md; `schema-version` changes
//! when a field changes meaning.

use std::path::{Path, PathBuf};

use crate::vmdk::Source;

pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub struct Manifest {
    pub schema_version: u32,
    pub v2k_version: String,
    pub source: SourceFacts,
    pub output: OutputFacts,
    pub hash: HashFacts,
    pub timing: Timing,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub struct SourceFacts {
    pub path: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub offset: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub length: Option<u64>,
    /// Always "vmdk" today.
    pub format: String,
    pub create_type: String,
    pub virtual_size: u64,
    pub allocated_bytes: u64,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub parent_chain: Vec<PathBuf>,
}

impl SourceFacts {
    pub fn new(source: &Source, info: &crate::vmdk::DiskInfo) -> Self {
        SourceFacts {
            path: source.path.clone(),
            offset: source.range.map(|r| r.offset),
            length: source.range.map(|r| r.len),
            format: "vmdk".into(),
            create_type: info.create_type.clone(),
            virtual_size: info.capacity,
            allocated_bytes: info.allocated_bytes,
            parent_chain: info.parent_chain.clone(),
        }
    }
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub struct OutputFacts {
    pub path: PathBuf,
    /// "qcow2" or "raw".
    pub format: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub cluster_size: Option<u64>,
    pub compressed: bool,
    /// Size of the output file in bytes (apparent size; raw files are sparse).
    pub file_size: u64,
    /// Virtual bytes stored as data (not holes or unallocated clusters).
    pub data_bytes: u64,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub struct HashFacts {
    /// "v2k-blkhash-sha256" (docs/blkhash.md).
    pub algorithm: String,
    pub block_size: u64,
    /// Hash of the source's virtual disk, computed while reading it.
    pub source: String,
    /// Hash of the output read back from the file; absent with `--no-verify`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub output: Option<String>,
    pub verified: bool,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub struct Timing {
    /// Seconds since the Unix epoch when the conversion started.
    pub started_unix: u64,
    pub copy_seconds: f64,
    pub verify_seconds: f64,
    pub total_seconds: f64,
    /// Virtual bytes per second over the copy (MiB/s).
    pub virtual_mib_per_second: f64,
    /// Allocated source bytes per second over the copy (MiB/s).
    pub data_mib_per_second: f64,
}

impl Timing {
    /// The timing of a conversion that copied `virtual_bytes` of disk, `data_bytes` of
    /// them data, in `copy_seconds` (rates per second of copy; one rule for the file and
    /// the stream converter).
    pub fn measured(
        started_unix: u64,
        copy_seconds: f64,
        verify_seconds: f64,
        total_seconds: f64,
        virtual_bytes: u64,
        data_bytes: u64,
    ) -> Timing {
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        Timing {
            started_unix,
            copy_seconds,
            verify_seconds,
            total_seconds,
            virtual_mib_per_second: mib(virtual_bytes) / copy_seconds.max(1e-9),
            data_mib_per_second: mib(data_bytes) / copy_seconds.max(1e-9),
        }
    }
}

/// Where the manifest of `output` lives.
pub fn manifest_path(output: &Path) -> PathBuf {
    let mut name = output
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".manifest.json");
    output.with_file_name(name)
}

impl HashFacts {
    /// The `v2k-blkhash-sha256` facts of a conversion: verified when the output was
    /// read back and hashed.
    pub fn blkhash(source: String, output: Option<String>) -> HashFacts {
        HashFacts {
            algorithm: crate::blkhash::ALGORITHM.into(),
            block_size: crate::blkhash::BLOCK as u64,
            verified: output.is_some(),
            source,
            output,
        }
    }
}

impl Manifest {
    pub fn load(path: &Path) -> crate::Result<Self> {
        let bytes =
            std::fs::read(path).map_err(|e| crate::Error::io(path, "reading the manifest", e))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| crate::Error::invalid(path, format!("manifest: {e}")))
    }
}
