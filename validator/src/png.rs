//! PPM (P6, what libvirt's screenshot may return) to PNG, so every report embeds the
//! same format. A PNG is the signature, an IHDR chunk, the zlib-compressed scanlines
//! (each prefixed with filter byte 0) in IDAT, and IEND; each chunk carries a CRC-32.

use std::io::Write;

use flate2::write::ZlibEncoder;
use flate2::{Compression, Crc};

/// Largest image accepted (a 16k × 16k console), so a hostile PPM header cannot make
/// us allocate without bound.
const MAX_PIXELS: u64 = 1 << 28;

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let mut crc = Crc::new();
    crc.update(kind);
    crc.update(data);
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    out.extend_from_slice(&crc.sum().to_be_bytes());
}

/// Encodes 8-bit RGB pixels as PNG.
pub fn encode_rgb(width: u32, height: u32, rgb: &[u8]) -> Option<Vec<u8>> {
    let row = width as usize * 3;
    if rgb.len() != row * height as usize {
        return None;
    }
    let mut z = ZlibEncoder::new(Vec::new(), Compression::fast());
    for line in rgb.chunks(row) {
        z.write_all(&[0]).ok()?;
        z.write_all(line).ok()?;
    }
    let idat = z.finish().ok()?;
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::with_capacity(13);
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit, RGB, deflate, no filter, no interlace
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &idat);
    chunk(&mut out, b"IEND", &[]);
    Some(out)
}

/// Converts a binary PPM (P6, maxval 255) to PNG.
pub fn ppm_to_png(ppm: &[u8]) -> Option<Vec<u8>> {
    // Header: "P6" whitespace width whitespace height whitespace maxval one-whitespace.
    let mut fields = Vec::new();
    let mut i = 0;
    while fields.len() < 4 && i < ppm.len() && i < 1024 {
        while i < ppm.len() && ppm[i].is_ascii_whitespace() {
            i += 1;
        }
        if ppm.get(i) == Some(&b'#') {
            while i < ppm.len() && ppm[i] != b'\n' {
                i += 1;
            }
            continue;
        }
        let s = i;
        while i < ppm.len() && !ppm[i].is_ascii_whitespace() {
            i += 1;
        }
        fields.push(std::str::from_utf8(&ppm[s..i]).ok()?.to_owned());
    }
    if fields.len() != 4 || fields[0] != "P6" || fields[3] != "255" {
        return None;
    }
    let w: u32 = fields[1].parse().ok()?;
    let h: u32 = fields[2].parse().ok()?;
    if u64::from(w) * u64::from(h) > MAX_PIXELS {
        return None;
    }
    let data = ppm.get(i + 1..)?;
    let need = w as usize * h as usize * 3;
    encode_rgb(w, h, data.get(..need)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_a_small_ppm_that_python_can_read_back() {
        let mut ppm = b"P6\n# a comment\n2 1\n255\n".to_vec();
        ppm.extend_from_slice(&[255, 0, 0, 0, 0, 255]);
        let png = ppm_to_png(&ppm).unwrap();
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"));
        assert!(png.ends_with(&[0xae, 0x42, 0x60, 0x82])); // CRC of IEND
        assert!(ppm_to_png(b"P5\n2 1\n255\n\0\0").is_none());
        assert!(ppm_to_png(b"P6\n99999 99999\n255\n").is_none());
    }
}
