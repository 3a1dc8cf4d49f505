//! A vCenter's SOAP response, as hostile as a server can make it: the namespace-aware
//! XML reader (DOCTYPE, depth and element limits), fault decoding, the property
//! collector's result, and the mapping of every returned object into the VM model,
//! then pre-flight. Nothing may panic or allocate without bound.
#![no_main]

use libfuzzer_sys::fuzz_target;
use v2k_inventory::preflight;
use v2k_vsphere::{client, inventory, xml};

fuzz_target!(|data: &[u8]| {
    let Ok(env) = xml::parse(data) else { return };
    let _ = client::parse_fault("RetrievePropertiesEx", &env);
    let Some(resp) = env.path(&["Body", "RetrievePropertiesExResponse"]) else {
        return;
    };
    let Ok((objects, _token)) = client::parse_retrieve_result(resp) else {
        return;
    };
    let names = inventory::Names::default();
    for o in &objects {
        if let Ok(mut vm) = inventory::map_vm(o, &names, "fuzz.invalid") {
            preflight::assess(&mut vm);
        }
    }
});
