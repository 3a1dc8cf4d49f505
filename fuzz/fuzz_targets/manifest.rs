//! OVF manifest lines.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = v2k_inventory::manifest::parse(data);
});
