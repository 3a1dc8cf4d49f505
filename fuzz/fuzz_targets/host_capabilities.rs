//! A `virsh capabilities` document (`--host-topology FILE`) into the host topology,
//! then a VM with every kind of VMware tuning mapped onto it and rendered as domain
//! XML: no panic, no unbounded allocation, whatever the document says.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use v2k_inventory::model::{SourceKind, Tuning, Vm};
use v2k_kvm_target::{domain_xml, Accel, DiskBus, GuestFeatures, HostTopology, NetworkMap, Target};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(host) = HostTopology::from_capabilities(text, "fuzz") {
        let mut vm = Vm::new_empty(SourceKind::Vmx, "/nonexistent/fuzz.vmx".into());
        vm.cpu.count = 6;
        vm.cpu.cores_per_socket = 3;
        vm.memory_mib = 4096;
        vm.tuning = Tuning {
            cpu_affinity: vec![0, 1, 5],
            numa_node_affinity: vec![1],
            vnuma_max_vcpus_per_node: Some(2),
            cpu_hot_add: data.len() % 2 == 0,
            memory_hot_add: true,
            memory_reservation_mib: Some(4096),
            memory_pinned: false,
        };
        let mut t = Target::from_vm(
            &vm,
            &[],
            DiskBus::VirtioBlk,
            &NetworkMap::default(),
            Accel::Tcg,
            Path::new("/nonexistent"),
        )
        .expect("a valid VM");
        let _ = t.tune(&vm, &host);
        let _ = domain_xml(&t, &GuestFeatures::default());
    }
});
