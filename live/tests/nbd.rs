//! The NBD server against a local-file source: the protocol driven byte by byte
//! (handshake, each option, bad lengths, out-of-range reads, WRITE refused, several
//! reads in flight), then real clients: `qemu-img compare` / `convert` over
//! `nbd+unix://`, a QCOW2 overlay backed by the export, and the served-hash record
//! verifying a streamed copy and catching a changed cluster not marked dirty.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use v2k_live::protocol as p;
use v2k_live::{serve, verify_image, FileSource, ServeOptions, ServerHandle, CLUSTER};

/// Deterministic disk content with zero runs and a partial last cluster.
fn pattern(size: usize, seed: u32) -> Vec<u8> {
    let mut v = vec![0u8; size];
    let mut x = seed | 1;
    for (i, b) in v.iter_mut().enumerate() {
        if (i >> 18) % 4 == 2 {
            continue;
        }
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *b = x as u8;
    }
    v
}

struct Fixture {
    rt: tokio::runtime::Runtime,
    dir: tempfile::TempDir,
    disk: PathBuf,
    data: Vec<u8>,
    server: Option<ServerHandle>,
}

impl Fixture {
    /// A disk of `size` bytes served as export "disk" on DIR/nbd.sock.
    fn new(size: usize) -> Fixture {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("disk.raw");
        let data = pattern(size, 7);
        std::fs::write(&disk, &data).unwrap();
        let src = Arc::new(FileSource::open(&disk).unwrap());
        let sock = dir.path().join("nbd.sock");
        let server = rt
            .block_on(serve(src, &sock, ServeOptions::default()))
            .unwrap();
        Fixture {
            rt,
            dir,
            disk,
            data,
            server: Some(server),
        }
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("nbd.sock")
    }

    fn uri(&self) -> String {
        format!("nbd+unix:///disk?socket={}", self.socket().display())
    }

    fn server(&self) -> &ServerHandle {
        self.server.as_ref().unwrap()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            self.rt.block_on(s.shutdown());
        }
    }
}

fn qemu_img(args: &[&str]) -> std::process::Output {
    Command::new("qemu-img")
        .args(args)
        .output()
        .expect("missing prerequisite: qemu-img (package qemu-utils)")
}

fn qemu_img_ok(args: &[&str]) {
    let o = qemu_img(args);
    assert!(
        o.status.success(),
        "qemu-img {args:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A raw protocol client.
struct Client(UnixStream);

impl Client {
    /// Connects and reads the greeting.
    fn connect(sock: &Path) -> Client {
        let mut s = UnixStream::connect(sock).unwrap();
        let mut g = [0u8; 18];
        s.read_exact(&mut g).unwrap();
        assert_eq!(g, p::greeting());
        Client(s)
    }

    /// Connects and sends the fixed-newstyle, no-zeroes client flags.
    fn hello(sock: &Path) -> Client {
        let mut c = Client::connect(sock);
        c.0.write_all(&3u32.to_be_bytes()).unwrap();
        c
    }

    fn option(&mut self, option: u32, data: &[u8]) {
        let mut b = p::IHAVEOPT.to_be_bytes().to_vec();
        b.extend_from_slice(&option.to_be_bytes());
        b.extend_from_slice(&(data.len() as u32).to_be_bytes());
        b.extend_from_slice(data);
        self.0.write_all(&b).unwrap();
    }

    /// Reads one option reply: (option, type, data).
    fn reply(&mut self) -> (u32, u32, Vec<u8>) {
        let mut h = [0u8; 20];
        self.0.read_exact(&mut h).unwrap();
        assert_eq!(h[..8], p::REPLY_MAGIC.to_be_bytes());
        let n = u32::from_be_bytes(h[16..20].try_into().unwrap()) as usize;
        let mut d = vec![0u8; n];
        self.0.read_exact(&mut d).unwrap();
        (
            u32::from_be_bytes(h[8..12].try_into().unwrap()),
            u32::from_be_bytes(h[12..16].try_into().unwrap()),
            d,
        )
    }

    fn info_payload(name: &str, infos: &[u16]) -> Vec<u8> {
        let mut d = (name.len() as u32).to_be_bytes().to_vec();
        d.extend_from_slice(name.as_bytes());
        d.extend_from_slice(&(infos.len() as u16).to_be_bytes());
        for i in infos {
            d.extend_from_slice(&i.to_be_bytes());
        }
        d
    }

    /// NBD_OPT_GO on export "disk"; returns the size announced.
    fn go(&mut self) -> u64 {
        self.option(
            p::OPT_GO,
            &Self::info_payload("disk", &[p::INFO_BLOCK_SIZE]),
        );
        let (_, t, d) = self.reply();
        assert_eq!(t, p::REP_INFO);
        let size = u64::from_be_bytes(d[2..10].try_into().unwrap());
        assert_eq!(
            u16::from_be_bytes(d[10..12].try_into().unwrap()),
            p::TRANSMISSION_FLAGS
        );
        let (_, t, d) = self.reply();
        assert_eq!((t, u16::from_be_bytes([d[0], d[1]])), (p::REP_INFO, 3));
        assert_eq!(self.reply().1, p::REP_ACK);
        size
    }

    fn request(&mut self, kind: u16, handle: u64, offset: u64, len: u32) {
        let mut b = p::REQUEST_MAGIC.to_be_bytes().to_vec();
        b.extend_from_slice(&0u16.to_be_bytes());
        b.extend_from_slice(&kind.to_be_bytes());
        b.extend_from_slice(&handle.to_be_bytes());
        b.extend_from_slice(&offset.to_be_bytes());
        b.extend_from_slice(&len.to_be_bytes());
        self.0.write_all(&b).unwrap();
    }

    /// Reads a simple reply header: (error, handle).
    fn simple(&mut self) -> (u32, u64) {
        let mut h = [0u8; 16];
        self.0.read_exact(&mut h).unwrap();
        assert_eq!(h[..4], p::SIMPLE_REPLY_MAGIC.to_be_bytes());
        (
            u32::from_be_bytes(h[4..8].try_into().unwrap()),
            u64::from_be_bytes(h[8..16].try_into().unwrap()),
        )
    }

    fn data(&mut self, n: usize) -> Vec<u8> {
        let mut d = vec![0u8; n];
        self.0.read_exact(&mut d).unwrap();
        d
    }

    /// True when the server has closed the connection.
    fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.0.read(&mut b), Ok(0) | Err(_))
    }
}

#[test]
fn options_are_answered_as_the_protocol_says() {
    let f = Fixture::new(1 << 20);
    let mut c = Client::hello(&f.socket());
    // LIST: one export, then ACK; LIST with data is invalid.
    c.option(p::OPT_LIST, &[]);
    let (o, t, d) = c.reply();
    assert_eq!((o, t), (p::OPT_LIST, p::REP_SERVER));
    assert_eq!(d, p::list_entry("disk"));
    assert_eq!(c.reply().1, p::REP_ACK);
    c.option(p::OPT_LIST, b"x");
    assert_eq!(c.reply().1, p::REP_ERR_INVALID);
    // Unknown and unsupported options (STRUCTURED_REPLY = 8, STARTTLS = 5, 999).
    for o in [8, 5, 999] {
        c.option(o, &[]);
        assert_eq!(c.reply(), (o, p::REP_ERR_UNSUP, vec![]));
    }
    // INFO: size, no block size unless asked, ACK; an unknown export; bad lengths.
    c.option(p::OPT_INFO, &Client::info_payload("disk", &[]));
    let (_, t, d) = c.reply();
    assert_eq!(t, p::REP_INFO);
    assert_eq!(d, p::info_export(1 << 20));
    assert_eq!(c.reply().1, p::REP_ACK);
    c.option(p::OPT_INFO, &Client::info_payload("other", &[]));
    assert_eq!(c.reply().1, p::REP_ERR_UNKNOWN);
    let mut bad = Client::info_payload("disk", &[p::INFO_EXPORT]);
    bad.pop();
    c.option(p::OPT_GO, &bad);
    assert_eq!(c.reply().1, p::REP_ERR_INVALID);
    c.option(p::OPT_GO, &[0, 0, 0]);
    assert_eq!(c.reply().1, p::REP_ERR_INVALID);
    // GO enters transmission.
    assert_eq!(c.go(), 1 << 20);
    c.request(p::CMD_READ, 1, 0, 512);
    assert_eq!(c.simple(), (0, 1));
    assert_eq!(c.data(512), f.data[..512]);
    c.request(p::CMD_DISC, 2, 0, 0);
    assert!(c.closed());

    // ABORT is acknowledged and the connection closed.
    let mut c = Client::hello(&f.socket());
    c.option(p::OPT_ABORT, &[]);
    assert_eq!(c.reply().1, p::REP_ACK);
    assert!(c.closed());

    // EXPORT_NAME: size, flags, no zeroes (asked for); the empty name is the default.
    let mut c = Client::hello(&f.socket());
    c.option(p::OPT_EXPORT_NAME, b"");
    let d = c.data(10);
    assert_eq!(d, p::export_name_reply(1 << 20, true));
    c.request(p::CMD_READ, 9, 4096, 100);
    assert_eq!(c.simple(), (0, 9));
    assert_eq!(c.data(100), f.data[4096..4196]);

    // EXPORT_NAME of an unknown export: closed (the protocol has no error reply).
    let mut c = Client::hello(&f.socket());
    c.option(p::OPT_EXPORT_NAME, b"nope");
    assert!(c.closed());

    // A client without the zero-padding flag gets the 124 zero bytes.
    let mut c = Client::connect(&f.socket());
    c.0.write_all(&1u32.to_be_bytes()).unwrap();
    c.option(p::OPT_EXPORT_NAME, b"disk");
    assert_eq!(c.data(134), p::export_name_reply(1 << 20, false));
}

#[test]
fn hostile_handshakes_are_closed_cleanly() {
    let f = Fixture::new(1 << 20);
    // Not fixed newstyle; unknown client flags.
    for flags in [0u32, 0x8000_0001] {
        let mut c = Client::connect(&f.socket());
        c.0.write_all(&flags.to_be_bytes()).unwrap();
        assert!(c.closed(), "client flags {flags:#x}");
    }
    // An option with a bad magic.
    let mut c = Client::hello(&f.socket());
    c.0.write_all(&[0u8; 16]).unwrap();
    assert!(c.closed());
    // An option claiming 4 GiB of data: TOO_BIG, then closed, nothing allocated.
    let mut c = Client::hello(&f.socket());
    let mut b = p::IHAVEOPT.to_be_bytes().to_vec();
    b.extend_from_slice(&p::OPT_GO.to_be_bytes());
    b.extend_from_slice(&u32::MAX.to_be_bytes());
    c.0.write_all(&b).unwrap();
    assert_eq!(c.reply().1, p::REP_ERR_TOO_BIG);
    assert!(c.closed());
    // A client that never stops negotiating is cut off after MAX_OPTIONS.
    let mut c = Client::hello(&f.socket());
    for _ in 0..p::MAX_OPTIONS {
        c.option(999, &[]);
        assert_eq!(c.reply().1, p::REP_ERR_UNSUP);
    }
    assert!(c.closed());
    // The server still serves after all that.
    let mut c = Client::hello(&f.socket());
    c.go();
    c.request(p::CMD_READ, 1, 0, 1);
    assert_eq!(c.simple(), (0, 1));
    assert!(f.server().stats().protocol_errors >= 3);
}

#[test]
fn bad_requests_get_error_replies_and_the_connection_goes_on() {
    let size = 3 * CLUSTER + 1000;
    let f = Fixture::new(size as usize);
    let mut c = Client::hello(&f.socket());
    assert_eq!(c.go(), size);
    // Past the end, overflowing, over the request limit: EINVAL.
    c.request(p::CMD_READ, 1, size - 10, 11);
    assert_eq!(c.simple(), (p::EINVAL, 1));
    c.request(p::CMD_READ, 2, u64::MAX - 1, 4);
    assert_eq!(c.simple(), (p::EINVAL, 2));
    c.request(p::CMD_READ, 3, 0, p::MAX_REQUEST_LEN + 1);
    assert_eq!(c.simple(), (p::EINVAL, 3));
    // WRITE: its payload is skipped and EPERM returned; the source is untouched.
    c.request(p::CMD_WRITE, 4, 0, 4096);
    c.0.write_all(&[0xAA; 4096]).unwrap();
    assert_eq!(c.simple(), (p::EPERM, 4));
    c.request(p::CMD_TRIM, 5, 0, 4096);
    assert_eq!(c.simple(), (p::EPERM, 5));
    c.request(p::CMD_WRITE_ZEROES, 6, 0, 4096);
    assert_eq!(c.simple(), (p::EPERM, 6));
    c.request(p::CMD_FLUSH, 7, 0, 0);
    assert_eq!(c.simple(), (p::EINVAL, 7));
    c.request(77, 8, 0, 0);
    assert_eq!(c.simple(), (p::EINVAL, 8));
    // The stream is still in step: the last (partial) cluster reads correctly.
    c.request(p::CMD_READ, 9, size - 1500, 1500);
    assert_eq!(c.simple(), (0, 9));
    assert_eq!(c.data(1500), f.data[size as usize - 1500..]);
    assert_eq!(std::fs::read(&f.disk).unwrap(), f.data);
    // A WRITE whose payload is over the limit cannot be skipped: EINVAL, closed.
    c.request(p::CMD_WRITE, 10, 0, u32::MAX);
    assert_eq!(c.simple(), (p::EINVAL, 10));
    assert!(c.closed());
    let st = f.server().stats();
    assert_eq!(st.errors, 9);
    assert_eq!(st.bytes_served, 1500);
}

#[test]
fn many_reads_in_flight_are_all_answered_by_handle() {
    let size = 8 << 20;
    let f = Fixture::new(size);
    let mut c = Client::hello(&f.socket());
    c.go();
    // 64 requests of various sizes and alignments sent before reading any reply.
    let reqs: Vec<(u64, u64, u32)> = (0..64u64)
        .map(|i| {
            (
                1000 + i,
                (i * 123_457) % (size as u64 - 300_000),
                1 + (i as u32 * 4099) % 300_000,
            )
        })
        .collect();
    for &(h, off, len) in &reqs {
        c.request(p::CMD_READ, h, off, len);
    }
    let mut seen = BTreeSet::new();
    for _ in &reqs {
        let (err, h) = c.simple();
        assert_eq!(err, 0);
        let &(_, off, len) = reqs.iter().find(|r| r.0 == h).expect("a known handle");
        assert_eq!(
            c.data(len as usize),
            f.data[off as usize..(off + len as u64) as usize]
        );
        assert!(seen.insert(h), "handle {h} answered twice");
    }
    assert_eq!(seen.len(), reqs.len());
}

#[test]
fn qemu_img_reads_the_export_byte_for_byte() {
    // 24 MiB + 38400 B: a partial last cluster.
    let f = Fixture::new((24 << 20) + 38_400);
    let uri = f.uri();
    let disk = f.disk.to_str().unwrap();
    qemu_img_ok(&["compare", "-f", "raw", "-F", "raw", &uri, disk]);
    let out = f.dir.path().join("copy.qcow2");
    let out = out.to_str().unwrap();
    qemu_img_ok(&[
        "convert", "-f", "raw", "-O", "qcow2", "-m", "8", "-W", &uri, out,
    ]);
    qemu_img_ok(&["compare", "-f", "qcow2", "-F", "raw", out, disk]);
    // Every cluster was served, and the record vouches for the copy.
    let rec = f.server().record();
    assert_eq!(rec.hashes.len() as u64, rec.clusters());
    let r = verify_image(&rec, Path::new(out), &BTreeSet::new()).unwrap();
    assert!(r.ok(), "{r:?}");
    assert_eq!((r.matched, r.unserved), (rec.clusters(), 0));
}

#[test]
fn an_overlay_on_the_export_converts_to_the_source() {
    let f = Fixture::new(16 << 20);
    let overlay = f.dir.path().join("overlay.qcow2");
    let ov = overlay.to_str().unwrap();
    qemu_img_ok(&["create", "-f", "qcow2", "-b", &f.uri(), "-F", "raw", ov]);
    // The overlay names the socket and export only: no credentials of any kind.
    let info = qemu_img(&["info", "-U", ov]);
    assert!(String::from_utf8_lossy(&info.stdout).contains("nbd+unix:///disk"));
    let flat = f.dir.path().join("flat.raw");
    qemu_img_ok(&["convert", "-O", "raw", ov, flat.to_str().unwrap()]);
    assert_eq!(std::fs::read(&flat).unwrap(), f.data);
}

/// What live import does after the stream: the standalone image, with the guest's
/// writes in some clusters, is checked against what was served.
#[test]
fn the_record_verifies_a_streamed_copy_and_catches_an_unmarked_change() {
    let f = Fixture::new((4 << 20) + 512);
    let overlay = f.dir.path().join("overlay.qcow2");
    let ov = overlay.to_str().unwrap();
    qemu_img_ok(&["create", "-f", "qcow2", "-b", &f.uri(), "-F", "raw", ov]);
    // The "guest" writes into cluster 5 (through the overlay, as a VM would).
    let io = Command::new("qemu-io")
        .args([
            "-f",
            "qcow2",
            "-c",
            &format!("write -P 0x5a {} 4096", 5 * CLUSTER + 100),
            ov,
        ])
        .output()
        .expect("missing prerequisite: qemu-io (package qemu-utils)");
    assert!(
        io.status.success(),
        "{}",
        String::from_utf8_lossy(&io.stderr)
    );
    // Then the stream: the overlay made standalone (qemu-img rebase onto nothing
    // copies every backing cluster the overlay does not hold, as block-stream does).
    qemu_img_ok(&["rebase", "-f", "qcow2", "-b", "", ov]);
    let rec = f.server().record();
    let dirty: BTreeSet<u64> = [5].into();
    let r = verify_image(&rec, &overlay, &dirty).unwrap();
    assert!(r.ok(), "{r:?}");
    assert_eq!(r.dirty, 1);
    // Cluster 5 is covered by the guest's write; cluster 5 not marked dirty is a
    // mismatch, and so is any other cluster changed behind the record's back.
    let r = verify_image(&rec, &overlay, &BTreeSet::new()).unwrap();
    assert_eq!(r.mismatched, [5]);
    let io = Command::new("qemu-io")
        .args([
            "-f",
            "qcow2",
            "-c",
            &format!("write -P 0x11 {} 1", 40 * CLUSTER),
            ov,
        ])
        .output()
        .unwrap();
    assert!(io.status.success());
    let r = verify_image(&rec, &overlay, &dirty).unwrap();
    assert_eq!(r.mismatched, [40]);
    // The record survives a save and load.
    let path = f.dir.path().join("served.hashes");
    rec.save(&path).unwrap();
    assert_eq!(v2k_live::HashRecord::load(&path).unwrap(), rec);
}

#[test]
fn an_existing_file_at_the_socket_path_is_never_replaced() {
    let f = Fixture::new(1 << 16);
    let planted = f.dir.path().join("planted");
    std::fs::write(&planted, b"not a socket").unwrap();
    let src = Arc::new(FileSource::open(&f.disk).unwrap());
    let e =
        f.rt.block_on(serve(src, &planted, ServeOptions::default()))
            .err()
            .expect("serving over an existing file must fail");
    assert!(e.to_string().contains("planted"), "{e}");
    assert_eq!(std::fs::read(&planted).unwrap(), b"not a socket");
    // The socket a server made is private to its user.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(f.socket()).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

/// CAN_MULTI_CONN is advertised: libnbd's copier then opens several connections,
/// each with many requests in flight, and the copy is still exact.
#[test]
fn several_connections_with_many_requests_copy_the_export_exactly() {
    let f = Fixture::new((12 << 20) + 4096);
    let out = f.dir.path().join("multi.raw");
    std::fs::write(&out, b"").unwrap();
    let o = Command::new("nbdcopy")
        .args([
            "--threads=4",
            "--connections=4",
            "--requests=16",
            "--request-size=1048576",
        ])
        .arg(f.uri())
        .arg(&out)
        .output()
        .expect("missing prerequisite: nbdcopy (package libnbd-bin)");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::read(&out).unwrap(), f.data);
    // nbdcopy opens several connections only when the server allows multi-conn.
    assert!(
        f.server().stats().connections >= 2,
        "{:?}",
        f.server().stats()
    );
}
