//! VMDK (every subformat a VMware estate produces) to QCOW2 or raw: parallel,
//! sparse-aware, crash-safe, verified by a block-wise content hash.
