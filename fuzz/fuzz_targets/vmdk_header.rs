//! A VMDK sparse header, then (if it passes) the grain directory and grain-table walk
//! over the same bytes as the whole file, as `VmdkImage::open` does.
#![no_main]

use std::io::Cursor;

use libfuzzer_sys::fuzz_target;
use v2k_converters::vmdk::{alloc, header};

fuzz_target!(|data: &[u8]| {
    let len = data.len() as u64;
    let _ = header::sniff(data);
    if let Ok(h) = header::SparseHeader::parse(data, len) {
        if h.gd_offset != header::GD_AT_END {
            let mut map = alloc::ChunkMap::empty(h.capacity_bytes());
            let _ = alloc::walk_sparse(&mut Cursor::new(data), &h, h.gd_offset, len, 0, &mut map);
        }
    }
});
