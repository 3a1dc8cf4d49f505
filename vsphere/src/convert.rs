//! A vSphere VM's disks downloaded and converted in one pass: each disk's flat
//! extent streams from the datastore ([`crate::datastore`]) straight into the QCOW2
//! stream converter ([`v2k_converters::stream`]), so no temporary full copy is
//! written and the conversion runs while the bytes arrive. Snapshot chains and
//! sparse or split disks, which need random access, are staged locally first and
//! consolidated by the file converter.

use std::path::PathBuf;

use v2k_converters::convert::{Job, Options, Progress};
use v2k_converters::manifest::Manifest;
use v2k_converters::stream::{convert_stream, StreamJob};
use v2k_converters::vmdk::Source;
use v2k_inventory::model::{DiskLocation, Vm};

use crate::client::Client;
use crate::datastore::{
    shape, DatastorePath, DiskShape, DiskSource, DownloadProgress, MAX_DESCRIPTOR_BYTES,
};
use crate::error::{Error, Result};

/// Default number of disks downloaded at once from one ESXi host (Forklift's
/// default per-host in-flight limit is of the same order; more rarely helps, as
/// one host's management network is the bottleneck).
pub const DEFAULT_PER_HOST: usize = 2;

/// One disk to fetch into `output`.
#[derive(Debug, Clone)]
pub struct DiskJob {
    pub source: DiskSource,
    pub output: PathBuf,
}

/// The download jobs for every disk of a vSphere VM, outputs named by `name(i)`.
pub fn disk_jobs(vm: &Vm, name: impl Fn(usize) -> PathBuf) -> Result<Vec<DiskJob>> {
    let host = vm.vsphere.as_ref().and_then(|v| v.host.clone());
    vm.disks
        .iter()
        .enumerate()
        .map(|(i, d)| match &d.location {
            DiskLocation::Datastore {
                datastore,
                path,
                datacenter,
                ..
            } => Ok(DiskJob {
                source: DiskSource {
                    descriptor: DatastorePath {
                        datastore: datastore.clone(),
                        path: path.clone(),
                    },
                    datacenter: datacenter.clone(),
                    host: host.clone(),
                },
                output: name(i),
            }),
            other => Err(Error::Usage(format!(
                "disk {}: not on a datastore ({other:?})",
                d.id
            ))),
        })
        .collect()
}

/// Downloads and converts every job, at most `per_host` at once from one host.
/// Results come back in job order; one failing disk does not stop the others.
///
/// A single flat extent (ESXi's `vmfs`/`vmfsThin`, what a VM without snapshots has)
/// streams straight into the converter. Anything else — a snapshot delta and its
/// parents, a sparse or split disk — needs random access, so its files are staged
/// beside the output (`.NAME.v2k-staging/`), converted by the file converter (which
/// consolidates the chain and checks it like any local VMDK) and the staging removed,
/// whether the conversion worked or not.
pub fn download_and_convert(
    client: &Client,
    jobs: &[DiskJob],
    opts: &Options,
    per_host: usize,
    download: &dyn DownloadProgress,
    convert: &dyn Progress,
) -> Vec<Result<Manifest>> {
    // Two disks bound for one output file: refuse all before downloading anything.
    let labels: Vec<PathBuf> = jobs
        .iter()
        .map(|j| PathBuf::from(j.source.descriptor.to_string()))
        .collect();
    let pairs: Vec<(&std::path::Path, &std::path::Path)> = labels
        .iter()
        .zip(jobs)
        .map(|(l, j)| (l.as_path(), j.output.as_path()))
        .collect();
    if let Err(e) = v2k_converters::convert::check_distinct_outputs(&pairs) {
        let msg = e.to_string();
        return jobs
            .iter()
            .map(|_| Err(v2k_converters::Error::Usage(msg.clone()).into()))
            .collect();
    }
    let shapes: Vec<Result<DiskShape>> = jobs
        .iter()
        .map(|j| {
            let raw = client.get_small(
                &j.source.descriptor,
                &j.source.datacenter,
                MAX_DESCRIPTOR_BYTES,
            )?;
            shape(&j.source.descriptor, &raw)
        })
        .collect();
    let streamed: Vec<usize> = (0..jobs.len())
        .filter(|&i| matches!(shapes[i], Ok(DiskShape::Flat(_))))
        .collect();
    let sources: Vec<DiskSource> = streamed.iter().map(|&i| jobs[i].source.clone()).collect();
    let remap = Remap {
        inner: download,
        index: &streamed,
    };
    let mut streamed_results = client
        .stream_disks(&sources, per_host, &remap, |k, info, reader| {
            let i = streamed[k];
            let job = StreamJob {
                label: PathBuf::from(info.flat.extent.to_string()),
                create_type: info.flat.create_type.clone(),
                virtual_size: info.flat.size,
                output: jobs[i].output.clone(),
            };
            Ok(convert_stream(reader, &job, opts, i, convert)?)
        })
        .into_iter();
    shapes
        .into_iter()
        .enumerate()
        .map(|(i, sh)| match sh? {
            DiskShape::Flat(_) => streamed_results
                .next()
                .unwrap_or_else(|| Err(Error::protocol("download", "no result"))),
            DiskShape::Staged(_) => staged(client, i, &jobs[i], opts, download, convert),
        })
        .collect()
}

/// Stages a disk's files beside its output, converts them, removes the staging.
fn staged(
    client: &Client,
    i: usize,
    job: &DiskJob,
    opts: &Options,
    download: &dyn DownloadProgress,
    convert: &dyn Progress,
) -> Result<Manifest> {
    let name = job
        .output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| format!("disk{i}"));
    let dir = job
        .output
        .parent()
        .unwrap_or(std::path::Path::new("."))
        .join(format!(".{name}.v2k-staging"));
    let remove = || match std::fs::remove_dir_all(&dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::Io {
            path: dir.clone(),
            what: "removing the staging directory".into(),
            source: e,
        }),
        _ => Ok(()),
    };
    // A killed run's leftovers are never trusted.
    remove()?;
    let r = client
        .stage_disk(i, &job.source, &dir, download)
        .and_then(|top| {
            let job = Job {
                source: Source {
                    path: top,
                    range: None,
                },
                output: job.output.clone(),
            };
            Ok(v2k_converters::convert::convert(&job, opts, i, convert)?)
        });
    let cleaned = remove();
    let m = r?;
    cleaned?;
    Ok(m)
}

/// Reports a subset's download progress under the jobs' own indices.
struct Remap<'a> {
    inner: &'a dyn DownloadProgress,
    index: &'a [usize],
}

impl DownloadProgress for Remap<'_> {
    fn progress(&self, disk: usize, done: u64, total: u64, bytes_per_second: f64) {
        self.inner
            .progress(self.index[disk], done, total, bytes_per_second)
    }
    fn resumed(&self, disk: usize, at: u64, reason: &str) {
        self.inner.resumed(self.index[disk], at, reason)
    }
}
