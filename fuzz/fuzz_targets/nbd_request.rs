//! Bytes from an NBD client, through every parser the server applies to them: the
//! client flags, an option header, an NBD_OPT_INFO/GO payload, and a transmission
//! request judged against an export whose size also comes from the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use v2k_live::protocol as p;

fuzz_target!(|data: &[u8]| {
    if let Some(f) = data.get(..4) {
        let _ = p::parse_client_flags([f[0], f[1], f[2], f[3]]);
    }
    if let Some(h) = data.get(..16).and_then(|h| <&[u8; 16]>::try_from(h).ok()) {
        let _ = p::parse_option_header(h);
    }
    let _ = p::parse_info_request(data);
    if let Some(r) = data
        .get(..p::REQUEST_LEN)
        .and_then(|r| <&[u8; p::REQUEST_LEN]>::try_from(r).ok())
    {
        if let Ok(req) = p::parse_request(r) {
            let size = data
                .get(p::REQUEST_LEN..p::REQUEST_LEN + 8)
                .map_or(1 << 30, |s| u64::from_be_bytes(s.try_into().unwrap_or([0; 8])));
            let _ = p::classify(&req, size);
        }
    }
});
