//! VMDK (every subformat a VMware estate produces) to QCOW2 or raw: parallel,
//! sparse-aware, crash-safe, verified by a block-wise content hash.
//!
//! Entry points: [`vmdk::inspect_path`] for what a disk is, [`convert::convert`]
//! to convert one. The output formats live in [`qcow2`] and [`raw`], the hash in
//! [`blkhash`], the crash-safe output file in [`output`].

mod error;
pub mod vmdk;

pub use error::{Error, ErrorKind, Result};
pub mod blkhash;
pub mod convert;
pub mod manifest;
pub mod output;
pub mod probe;
pub mod qcow2;
mod raw;
pub mod stream;
pub mod verify;
