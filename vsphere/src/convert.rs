//! A vSphere VM's disks downloaded and converted in one pass: each disk's flat
//! extent streams from the datastore ([`crate::datastore`]) straight into the QCOW2
//! stream converter ([`v2k_converters::stream`]), so no temporary full copy is ever
//! written and the conversion runs while the bytes arrive.

use std::path::PathBuf;

use v2k_converters::convert::{Options, Progress};
use v2k_converters::manifest::Manifest;
use v2k_converters::stream::{convert_stream, StreamJob};
use v2k_inventory::model::{DiskLocation, Vm};

use crate::client::Client;
use crate::datastore::{DatastorePath, DiskSource, DownloadProgress};
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
pub fn download_and_convert(
    client: &Client,
    jobs: &[DiskJob],
    opts: &Options,
    per_host: usize,
    download: &dyn DownloadProgress,
    convert: &dyn Progress,
) -> Vec<Result<Manifest>> {
    let sources: Vec<DiskSource> = jobs.iter().map(|j| j.source.clone()).collect();
    client.stream_disks(&sources, per_host, download, |i, info, reader| {
        let job = StreamJob {
            label: PathBuf::from(info.flat.extent.to_string()),
            create_type: info.flat.create_type.clone(),
            virtual_size: info.flat.size,
            output: jobs[i].output.clone(),
        };
        Ok(convert_stream(reader, &job, opts, i, convert)?)
    })
}
