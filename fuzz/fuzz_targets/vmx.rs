//! VMX text into the VM model: parse, map (disk names resolve under a directory that
//! does not exist, so nothing on the host is touched), then pre-flight.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use v2k_inventory::{preflight, vmx, BuiltinProbe};

fuzz_target!(|data: &[u8]| {
    if let Ok(v) = vmx::Vmx::parse(data) {
        let dir = Path::new("/nonexistent/v2k-fuzz");
        let mut vm = vmx::to_vm(&v, &dir.join("fuzz.vmx"), dir, &BuiltinProbe);
        preflight::assess(&mut vm);
        let _ = vmx::snapshots_from_vmsd(&v);
    }
});
