//! A vCenter's SOAP response, as hostile as a server can make it: the namespace-aware
//! XML reader (DOCTYPE, depth and element limits), fault decoding, the property
//! collector's result, and the mapping of every returned object into the VM model,
//! then pre-flight; a PerformanceManager's counter list and `QueryPerf` answer
//! (`v2k baseline`). Nothing may panic or allocate without bound.
#![no_main]

use libfuzzer_sys::fuzz_target;
use v2k_inventory::preflight;
use v2k_vsphere::{client, inventory, perf, xml, MoRef};

fuzz_target!(|data: &[u8]| {
    let Ok(env) = xml::parse(data) else { return };
    let _ = client::parse_fault("RetrievePropertiesEx", &env);
    if let Some(answer) = env.path(&["Body", "QueryPerfResponse"]) {
        let names = [
            perf::CPU_READY,
            perf::DISK_READ_LATENCY,
            perf::DISK_WRITE_LATENCY,
            perf::NET_DROPPED_RX,
            perf::NET_DROPPED_TX,
        ]
        .into_iter()
        .enumerate()
        .map(|(i, n)| (i as i64 + 1, n))
        .collect();
        let vm = MoRef::new("VirtualMachine", "vm-1");
        let _ = perf::summarize(answer, &names, &vm, 0, 86400);
        return;
    }
    let Some(resp) = env.path(&["Body", "RetrievePropertiesExResponse"]) else {
        return;
    };
    let Ok((objects, _token)) = client::parse_retrieve_result(resp) else {
        return;
    };
    let names = inventory::Names::default();
    for o in &objects {
        let _ = perf::counter_ids(o.get("perfCounter"));
        if let Ok(mut vm) = inventory::map_vm(o, &names, "fuzz.invalid") {
            preflight::assess(&mut vm);
        }
    }
});
