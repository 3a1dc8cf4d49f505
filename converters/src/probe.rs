//! The converter's answer to the inventory's question about a VMX disk
//! ([`v2k_inventory::DiskProbe`]): the whole image is validated by the same reader that
//! `convert` uses (extent paths, grain tables, the snapshot chain), so a disk it refuses
//! is a disk `convert` would refuse, and pre-flight reports it before anything is copied.

use std::path::Path;

use v2k_inventory::{BuiltinProbe, DiskFacts, DiskProbe, ProbeError};

/// The converter's VMDK reader (see the module doc).
#[derive(Debug, Default, Clone, Copy)]
pub struct ConvertersProbe;

impl DiskProbe for ConvertersProbe {
    fn probe(&self, path: &Path) -> Result<DiskFacts, ProbeError> {
        match crate::vmdk::inspect_path(path) {
            Ok(i) => Ok(DiskFacts {
                create_type: Some(i.create_type),
                capacity: Some(i.capacity),
                allocated_bytes: Some(i.allocated_bytes),
                parents: i.parent_chain,
                adapter_type: i.adapter_type,
                uuid: i.ddb.get("uuid").cloned(),
            }),
            Err(e) => {
                // An RDM mapping file is refused by the converter by design; say RDM
                // (its own concern) rather than "unreadable".
                if let Ok(f) = BuiltinProbe.probe(path) {
                    if f.create_type
                        .as_deref()
                        .is_some_and(|t| t.contains("RawDeviceMap"))
                    {
                        return Ok(f);
                    }
                }
                Err(ProbeError::Reader(Box::new(e)))
            }
        }
    }
}
