//! vCenter and ESXi as a migration source: inventory over the vSphere SOAP API
//! (vim25), disks streamed from the datastore HTTP interface into the converter, and
//! TLS that is verified by default, pinnable by SHA-256 thumbprint, and insecure only
//! by explicit choice.
//!
//! Entry points: [`Client::connect`] (a logged-in session; logs out on drop; or
//! [`ConnectSettings::connect`], as the user configured the server),
//! [`inventory::list_vms`] / [`inventory::get_vm`] (VMs in the shared
//! [`v2k_inventory::model::Vm`] model, with pre-flight concerns),
//! [`Client::stream_disks`] (several disks at once, resumable, each handed to a
//! consumer as a `Read`), [`convert::download_and_convert`] (straight into QCOW2 with
//! no temporary full copy), [`perf::baseline`] (a VM's last day of performance
//! counters) and [`tls::fetch_thumbprint`]. Everything the server says is
//! untrusted: see the limits in [`client`], [`xml`] and [`datastore`], and
//! docs/vsphere.md.

pub mod address;
pub mod client;
mod connect;
pub mod convert;
pub mod datastore;
mod error;
pub mod inventory;
pub mod perf;
pub mod ranged;
mod tls;
pub mod xml;

pub use address::Address;
pub use client::{Client, Credentials, MoRef, Options, Secret};
pub use connect::Settings as ConnectSettings;
pub use datastore::{DatastorePath, DiskSource};
pub use error::{Error, FaultKind, Result};
pub use tls::{fetch_thumbprint, Thumbprint, TlsMode};
