//! OVF XML into the VM model: parse (DOCTYPE, depth and size limits), map every
//! VirtualSystem with files located nowhere, then pre-flight.
#![no_main]

use libfuzzer_sys::fuzz_target;
use v2k_inventory::model::{DiskLocation, Source, SourceKind};
use v2k_inventory::{ovf, preflight};

fuzz_target!(|data: &[u8]| {
    let Ok(d) = ovf::parse(data) else { return };
    let source = Source {
        kind: SourceKind::Ovf,
        path: "/nonexistent/fuzz.ovf".into(),
        manifest: None,
    };
    let vms = ovf::to_vms(&d, &source, |f| -> Result<DiskLocation, String> {
        Ok(DiskLocation::Missing {
            reference: f.href.clone(),
        })
    });
    if let Ok(vms) = vms {
        for mut vm in vms {
            preflight::assess(&mut vm);
        }
    }
});
