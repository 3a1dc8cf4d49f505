//! The NBD wire format (fixed newstyle handshake, simple replies), as pure functions
//! over byte slices so that the parsers can be unit-tested and fuzzed without a
//! socket. Everything a client sends is untrusted: lengths are checked against the
//! named limits before anything is allocated, and offsets with checked arithmetic.
//!
//! ```text
//!  handshake   S: "NBDMAGIC" IHAVEOPT flags:u16        C: client-flags:u32
//!  option      C: IHAVEOPT option:u32 len:u32 data[len]
//!  reply       S: REPLY_MAGIC option:u32 type:u32 len:u32 data[len]
//!  request     C: 0x25609513 flags:u16 type:u16 handle:u64 offset:u64 len:u32  (28 B)
//!  reply       S: 0x67446698 error:u32 handle:u64 [data]                       (16 B)
//! ```
//! All integers are big-endian. Reference: the NBD protocol document (`proto.md` of
//! the NetworkBlockDevice project).

/// `NBDMAGIC`, first thing the server says.
pub const NBD_MAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`: newstyle negotiation, and the prefix of every option.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Prefix of every option reply.
pub const REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Prefix of every transmission request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Prefix of every simple reply.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

/// Handshake flags (server).
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
/// Client flags.
pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
pub const FLAG_C_NO_ZEROES: u32 = 1 << 1;

/// Transmission flags.
pub const TFLAG_HAS_FLAGS: u16 = 1 << 0;
pub const TFLAG_READ_ONLY: u16 = 1 << 1;
/// Several connections see the same data: true for a read-only export whose every
/// connection reads through one cluster cache and record.
pub const TFLAG_CAN_MULTI_CONN: u16 = 1 << 8;
/// What this server advertises.
pub const TRANSMISSION_FLAGS: u16 = TFLAG_HAS_FLAGS | TFLAG_READ_ONLY | TFLAG_CAN_MULTI_CONN;

/// Options.
pub const OPT_EXPORT_NAME: u32 = 1;
pub const OPT_ABORT: u32 = 2;
pub const OPT_LIST: u32 = 3;
pub const OPT_INFO: u32 = 6;
pub const OPT_GO: u32 = 7;

/// Option reply types.
pub const REP_ACK: u32 = 1;
pub const REP_SERVER: u32 = 2;
pub const REP_INFO: u32 = 3;
const REP_ERR: u32 = 1 << 31;
pub const REP_ERR_UNSUP: u32 = REP_ERR | 1;
pub const REP_ERR_INVALID: u32 = REP_ERR | 3;
pub const REP_ERR_UNKNOWN: u32 = REP_ERR | 6;
pub const REP_ERR_TOO_BIG: u32 = REP_ERR | 9;

/// `NBD_REP_INFO` payload types.
pub const INFO_EXPORT: u16 = 0;
pub const INFO_BLOCK_SIZE: u16 = 3;

/// Commands.
pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_TRIM: u16 = 4;
pub const CMD_WRITE_ZEROES: u16 = 6;

/// Error values in replies (fixed by the protocol, not the host's errno).
pub const EPERM: u32 = 1;
pub const EIO: u32 = 5;
pub const EINVAL: u32 = 22;

/// Largest option payload read: an export name is at most 4096 bytes by the
/// protocol, plus INFO/GO's name length and a few info requests. A longer option is
/// answered `NBD_REP_ERR_TOO_BIG` and the connection closed (its payload is not read).
pub const MAX_OPTION_LEN: u32 = 8192;
/// Options accepted in one negotiation before the connection is closed: QEMU sends
/// fewer than ten; a client looping forever must not hold a connection.
pub const MAX_OPTIONS: usize = 128;
/// Largest READ (and largest WRITE payload skipped): 32 MiB, QEMU's own NBD limit
/// and the advertised maximum block size.
pub const MAX_REQUEST_LEN: u32 = 32 << 20;
/// Preferred block size advertised: the cluster size the server reads in.
pub const PREFERRED_BLOCK: u32 = 64 << 10;

/// Size of a transmission request header.
pub const REQUEST_LEN: usize = 28;

/// What a client did wrong, for the log and the decision to close.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("bad magic {0:#x}")]
    BadMagic(u64),
    #[error("client flags {0:#x} are not fixed newstyle")]
    ClientFlags(u32),
    #[error("{what}: {detail}")]
    Malformed { what: &'static str, detail: String },
}

fn be_u16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}
fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn be_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

/// The server's greeting.
pub fn greeting() -> [u8; 18] {
    let mut g = [0u8; 18];
    g[..8].copy_from_slice(&NBD_MAGIC.to_be_bytes());
    g[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
    g[16..].copy_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    g
}

/// Checks the client's flags; returns whether it asked for no zero padding.
/// Unknown flags or a client that is not fixed newstyle are refused (the protocol
/// says to close the connection).
pub fn parse_client_flags(f: [u8; 4]) -> Result<bool, ProtocolError> {
    let f = u32::from_be_bytes(f);
    if f & FLAG_C_FIXED_NEWSTYLE == 0 || f & !(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES) != 0 {
        return Err(ProtocolError::ClientFlags(f));
    }
    Ok(f & FLAG_C_NO_ZEROES != 0)
}

/// An option's header: which option and how many payload bytes follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionHeader {
    pub option: u32,
    pub len: u32,
}

pub fn parse_option_header(b: &[u8; 16]) -> Result<OptionHeader, ProtocolError> {
    let magic = be_u64(b, 0);
    if magic != IHAVEOPT {
        return Err(ProtocolError::BadMagic(magic));
    }
    Ok(OptionHeader {
        option: be_u32(b, 8),
        len: be_u32(b, 12),
    })
}

/// An option reply.
pub fn option_reply(option: u32, kind: u32, data: &[u8]) -> Vec<u8> {
    let mut r = Vec::with_capacity(20 + data.len());
    r.extend_from_slice(&REPLY_MAGIC.to_be_bytes());
    r.extend_from_slice(&option.to_be_bytes());
    r.extend_from_slice(&kind.to_be_bytes());
    // Our own payloads are small (an export name, 14 bytes of info).
    r.extend_from_slice(&(data.len() as u32).to_be_bytes());
    r.extend_from_slice(data);
    r
}

/// NBD_OPT_INFO / NBD_OPT_GO payload: the export name and the info types asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfoRequest {
    pub name: Vec<u8>,
    pub infos: Vec<u16>,
}

/// Parses `name_len:u32 name[name_len] n:u16 info:u16[n]`; every length must add up
/// exactly to the payload's.
pub fn parse_info_request(data: &[u8]) -> Result<InfoRequest, ProtocolError> {
    let bad = |detail: String| ProtocolError::Malformed {
        what: "NBD_OPT_INFO/GO",
        detail,
    };
    if data.len() < 6 {
        return Err(bad(format!("{} bytes, at least 6 needed", data.len())));
    }
    let name_len = be_u32(data, 0) as usize;
    let name_end = 4usize
        .checked_add(name_len)
        .filter(|&e| e.checked_add(2).is_some_and(|n| n <= data.len()))
        .ok_or_else(|| {
            bad(format!(
                "name of {name_len} bytes in a {}-byte option",
                data.len()
            ))
        })?;
    let n = be_u16(data, name_end) as usize;
    let rest = &data[name_end + 2..];
    if rest.len() != n * 2 {
        return Err(bad(format!(
            "{n} info requests but {} bytes for them",
            rest.len()
        )));
    }
    Ok(InfoRequest {
        name: data[4..name_end].to_vec(),
        infos: rest.chunks_exact(2).map(|c| be_u16(c, 0)).collect(),
    })
}

/// `NBD_INFO_EXPORT`: size and transmission flags.
pub fn info_export(size: u64) -> [u8; 12] {
    let mut b = [0u8; 12];
    b[..2].copy_from_slice(&INFO_EXPORT.to_be_bytes());
    b[2..10].copy_from_slice(&size.to_be_bytes());
    b[10..].copy_from_slice(&TRANSMISSION_FLAGS.to_be_bytes());
    b
}

/// `NBD_INFO_BLOCK_SIZE`: any alignment works, the cluster size is best, and no
/// request may exceed [`MAX_REQUEST_LEN`].
pub fn info_block_size() -> [u8; 14] {
    let mut b = [0u8; 14];
    b[..2].copy_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    b[2..6].copy_from_slice(&1u32.to_be_bytes());
    b[6..10].copy_from_slice(&PREFERRED_BLOCK.to_be_bytes());
    b[10..].copy_from_slice(&MAX_REQUEST_LEN.to_be_bytes());
    b
}

/// The answer to NBD_OPT_EXPORT_NAME: size, flags and (unless the client asked for
/// none) 124 bytes of zeros.
pub fn export_name_reply(size: u64, no_zeroes: bool) -> Vec<u8> {
    let mut r = Vec::with_capacity(134);
    r.extend_from_slice(&size.to_be_bytes());
    r.extend_from_slice(&TRANSMISSION_FLAGS.to_be_bytes());
    if !no_zeroes {
        r.extend_from_slice(&[0u8; 124]);
    }
    r
}

/// `NBD_REP_SERVER` payload for NBD_OPT_LIST.
pub fn list_entry(name: &str) -> Vec<u8> {
    let mut d = Vec::with_capacity(4 + name.len());
    d.extend_from_slice(&(name.len() as u32).to_be_bytes());
    d.extend_from_slice(name.as_bytes());
    d
}

/// One transmission request, as sent (not yet judged against the export).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub flags: u16,
    pub kind: u16,
    pub handle: u64,
    pub offset: u64,
    pub len: u32,
}

pub fn parse_request(b: &[u8; REQUEST_LEN]) -> Result<Request, ProtocolError> {
    let magic = be_u32(b, 0);
    if magic != REQUEST_MAGIC {
        return Err(ProtocolError::BadMagic(u64::from(magic)));
    }
    Ok(Request {
        flags: be_u16(b, 4),
        kind: be_u16(b, 6),
        handle: be_u64(b, 8),
        offset: be_u64(b, 16),
        len: be_u32(b, 24),
    })
}

/// What the server does with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Read `len` bytes at `offset` (within the export, at most [`MAX_REQUEST_LEN`]).
    Read { offset: u64, len: u32 },
    /// Answer with this error at once; first skip `skip` payload bytes (a WRITE's data),
    /// so that the stream stays in step.
    Refuse { error: u32, skip: u32 },
    /// Close after the replies in flight.
    Disconnect,
    /// The stream cannot be followed any more (a WRITE whose payload is over the
    /// limit): reply `error`, then close.
    Fatal { error: u32 },
}

/// Judges a request against an export of `size` bytes. Never panics: every offset
/// and length is checked.
pub fn classify(r: &Request, size: u64) -> Action {
    let in_range = r
        .offset
        .checked_add(u64::from(r.len))
        .is_some_and(|end| end <= size);
    match r.kind {
        CMD_READ if r.len > MAX_REQUEST_LEN || !in_range => Action::Refuse {
            error: EINVAL,
            skip: 0,
        },
        CMD_READ => Action::Read {
            offset: r.offset,
            len: r.len,
        },
        CMD_DISC => Action::Disconnect,
        CMD_WRITE if r.len > MAX_REQUEST_LEN => Action::Fatal { error: EINVAL },
        CMD_WRITE => Action::Refuse {
            error: EPERM,
            skip: r.len,
        },
        CMD_TRIM | CMD_WRITE_ZEROES => Action::Refuse {
            error: EPERM,
            skip: 0,
        },
        // FLUSH, CACHE, BLOCK_STATUS, RESIZE were not advertised; unknown types are
        // invalid. None of them carries a payload in simple-reply mode.
        _ => Action::Refuse {
            error: EINVAL,
            skip: 0,
        },
    }
}

/// A simple reply's header (the data of a successful READ follows it).
pub fn simple_reply(error: u32, handle: u64) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    b[4..8].copy_from_slice(&error.to_be_bytes());
    b[8..].copy_from_slice(&handle.to_be_bytes());
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(kind: u16, offset: u64, len: u32) -> [u8; REQUEST_LEN] {
        let mut b = [0u8; REQUEST_LEN];
        b[..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        b[6..8].copy_from_slice(&kind.to_be_bytes());
        b[8..16].copy_from_slice(&7u64.to_be_bytes());
        b[16..24].copy_from_slice(&offset.to_be_bytes());
        b[24..].copy_from_slice(&len.to_be_bytes());
        b
    }

    #[test]
    fn reads_inside_the_export_are_served_and_others_refused() {
        let size = 1 << 20;
        let c = |kind, off, len| classify(&parse_request(&req(kind, off, len)).unwrap(), size);
        assert_eq!(
            c(CMD_READ, 0, 4096),
            Action::Read {
                offset: 0,
                len: 4096
            }
        );
        assert!(matches!(c(CMD_READ, size - 1, 1), Action::Read { .. }));
        assert_eq!(
            c(CMD_READ, size - 1, 2),
            Action::Refuse {
                error: EINVAL,
                skip: 0
            }
        );
        // offset + len overflows u64: refused, not wrapped.
        assert_eq!(
            c(CMD_READ, u64::MAX, 2),
            Action::Refuse {
                error: EINVAL,
                skip: 0
            }
        );
        let big = classify(
            &parse_request(&req(CMD_READ, 0, MAX_REQUEST_LEN + 1)).unwrap(),
            u64::MAX,
        );
        assert_eq!(
            big,
            Action::Refuse {
                error: EINVAL,
                skip: 0
            }
        );
    }

    #[test]
    fn writes_are_refused_with_eperm_and_their_payload_skipped() {
        let r = parse_request(&req(CMD_WRITE, 0, 512)).unwrap();
        assert_eq!(
            classify(&r, 4096),
            Action::Refuse {
                error: EPERM,
                skip: 512
            }
        );
        let r = parse_request(&req(CMD_WRITE, 0, u32::MAX)).unwrap();
        assert_eq!(classify(&r, 4096), Action::Fatal { error: EINVAL });
        for k in [CMD_TRIM, CMD_WRITE_ZEROES] {
            let r = parse_request(&req(k, 0, 512)).unwrap();
            assert_eq!(
                classify(&r, 4096),
                Action::Refuse {
                    error: EPERM,
                    skip: 0
                }
            );
        }
        for k in [CMD_FLUSH, 5, 7, 8, 999] {
            let r = parse_request(&req(k, 0, 512)).unwrap();
            assert_eq!(
                classify(&r, 4096),
                Action::Refuse {
                    error: EINVAL,
                    skip: 0
                }
            );
        }
        assert_eq!(
            classify(&parse_request(&req(CMD_DISC, 0, 0)).unwrap(), 0),
            Action::Disconnect
        );
    }

    #[test]
    fn a_request_with_a_bad_magic_is_an_error() {
        let mut b = req(CMD_READ, 0, 1);
        b[0] ^= 1;
        assert!(matches!(parse_request(&b), Err(ProtocolError::BadMagic(_))));
    }

    #[test]
    fn info_requests_must_add_up_exactly() {
        let mut d = Vec::new();
        d.extend_from_slice(&4u32.to_be_bytes());
        d.extend_from_slice(b"disk");
        d.extend_from_slice(&2u16.to_be_bytes());
        d.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
        d.extend_from_slice(&INFO_EXPORT.to_be_bytes());
        let r = parse_info_request(&d).unwrap();
        assert_eq!(r.name, b"disk");
        assert_eq!(r.infos, [INFO_BLOCK_SIZE, INFO_EXPORT]);
        // One byte short, one too many, a name longer than the payload, a name
        // length that overflows, too short for the fixed fields.
        assert!(parse_info_request(&d[..d.len() - 1]).is_err());
        let mut long = d.clone();
        long.push(0);
        assert!(parse_info_request(&long).is_err());
        let mut lie = d.clone();
        lie[..4].copy_from_slice(&100u32.to_be_bytes());
        assert!(parse_info_request(&lie).is_err());
        lie[..4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(parse_info_request(&lie).is_err());
        assert!(parse_info_request(&[0, 0, 0, 0, 0]).is_err());
        // An empty name with no info requests is valid (the default export).
        assert_eq!(
            parse_info_request(&[0; 6]).unwrap(),
            InfoRequest {
                name: vec![],
                infos: vec![]
            }
        );
    }

    #[test]
    fn client_flags_must_be_fixed_newstyle_and_known() {
        assert_eq!(parse_client_flags([0, 0, 0, 3]), Ok(true));
        assert_eq!(parse_client_flags([0, 0, 0, 1]), Ok(false));
        assert!(parse_client_flags([0, 0, 0, 0]).is_err());
        assert!(parse_client_flags([0, 0, 0, 2]).is_err());
        assert!(parse_client_flags([0x80, 0, 0, 1]).is_err());
    }

    #[test]
    fn replies_are_laid_out_as_the_protocol_says() {
        let r = option_reply(OPT_GO, REP_ACK, &[]);
        assert_eq!(r.len(), 20);
        assert_eq!(&r[..8], &REPLY_MAGIC.to_be_bytes());
        assert_eq!(simple_reply(EIO, 9)[4..8], 5u32.to_be_bytes());
        assert_eq!(export_name_reply(10, false).len(), 134);
        assert_eq!(export_name_reply(10, true).len(), 10);
        assert_eq!(info_export(10)[10..], TRANSMISSION_FLAGS.to_be_bytes());
    }

    /// A cheap stand-in for the fuzz target (fuzz/fuzz_targets/nbd_request.rs) that
    /// runs with the unit tests: random and mutated-valid inputs through every parser
    /// never panic, and whatever `classify` lets through as a READ lies within the
    /// export and the request limit.
    #[test]
    fn random_client_bytes_never_panic_and_reads_stay_in_bounds() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for round in 0..200_000u32 {
            let mut b = [0u8; 64];
            for c in b.chunks_mut(8) {
                c.copy_from_slice(&next().to_le_bytes());
            }
            // Half the rounds start from valid magics, so the later fields are reached.
            if round % 2 == 0 {
                b[..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
                b[6..8].copy_from_slice(&((round % 10) as u16).to_be_bytes());
            }
            let n = (next() % 65) as usize;
            let _ = parse_client_flags([b[0], b[1], b[2], b[3]]);
            let _ = parse_option_header(b[..16].try_into().unwrap());
            let _ = parse_info_request(&b[..n]);
            let size = next() >> (next() % 64);
            if let Ok(r) = parse_request(b[..REQUEST_LEN].try_into().unwrap()) {
                if let Action::Read { offset, len } = classify(&r, size) {
                    assert!(len <= MAX_REQUEST_LEN);
                    assert!(offset
                        .checked_add(u64::from(len))
                        .is_some_and(|e| e <= size));
                }
            }
        }
    }
}
