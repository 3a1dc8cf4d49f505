//! QCOW2 version 3 output: a write-once streaming writer and an independent reader
//! used to verify what was written.
//!
//! Why our own writer rather than the `qcow2-rs` crate (FIELD-NOTES §5): that crate
//! silences the `log` crate in release builds, crashes on crafted input, is not
//! `Sync`, and filled 1 GiB slower than qemu-img. A converter writes each cluster
//! once, in guest order, which makes a QCOW2 writer small: clusters are allocated
//! sequentially, each L2 table is written when its 512 MiB region is done, refcount
//! blocks sit in reserved slots, and the L1 and refcount tables and the header are
//! written last. Every output is checked by `qemu-img check` and `qemu-img compare`
//! in the tests.
//!
//! ```text
//!  host cluster:  0       1          2 ...                       k*R           end
//!                 header  refblock0  data… L2 data… compressed…  refblock(k) … L1  reftable
//!  R = clusters one refcount block covers (cluster_size / 2 with 16-bit refcounts)
//! ```

pub mod layout;
pub mod reader;
pub mod writer;

pub use reader::Qcow2Reader;
pub use writer::Qcow2Writer;
