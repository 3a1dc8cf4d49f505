//! The QCOW2 header decoder used when verifying outputs read back from disk.
#![no_main]

use libfuzzer_sys::fuzz_target;
use v2k_converters::qcow2::layout::Header;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = Header::decode(data) {
        let _ = Header::decode(&h.encode());
    }
});
