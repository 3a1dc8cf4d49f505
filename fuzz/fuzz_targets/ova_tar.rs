//! The OVA tar index: headers, pax and GNU extensions, every refusal.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = v2k_inventory::tar::index(&mut std::io::Cursor::new(data), data.len() as u64);
});
