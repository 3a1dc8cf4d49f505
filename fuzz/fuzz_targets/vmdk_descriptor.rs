//! A VMDK text descriptor (separate file or embedded), parsed with all its limits.
#![no_main]

use libfuzzer_sys::fuzz_target;
use v2k_converters::vmdk::descriptor;

fuzz_target!(|data: &[u8]| {
    if let Ok(d) = descriptor::parse(data) {
        let _ = d.capacity_bytes();
        let _ = d.has_parent();
    }
});
