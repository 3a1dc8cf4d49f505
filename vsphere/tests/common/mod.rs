//! The vCenter simulator as a test peer: builds `tests/vcsim/main.go` against Debian's
//! govmomi (GOPATH mode, cached by the hash of main.go under /var/cache/v2k/vcsim/),
//! generates a CA and a 2048-bit server certificate with the openssl CLI, starts one
//! simulator per test on 127.0.0.1:0 with its own TMPDIR, user and password, and stops
//! it by PID when the guard is dropped. A missing prerequisite (go, govmomi's source,
//! openssl) fails the test with a message saying what to install: never a silent skip.

#![allow(dead_code)]

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use sha2::{Digest, Sha256};
use v2k_vsphere::{Client, Credentials, Options, Secret, Thumbprint, TlsMode};

pub const USER: &str = "v2k-test@vsphere.local";
pub const PASSWORD: &str = "s3cret&<pass>\"word";
const CACHE: &str = "/var/cache/v2k/vcsim";
const GOVMOMI: &str = "/usr/share/gocode/src/github.com/vmware/govmomi/simulator";

fn main_go() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/vcsim/main.go")
}

fn require(cond: bool, what: &str) {
    assert!(
        cond,
        "missing prerequisite: {what} (scripts/setup.sh installs golang-go and \
         golang-github-vmware-govmomi-dev; openssl comes with Debian)"
    );
}

fn have(cmd: &str) -> bool {
    Command::new(cmd)
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// The launcher binary, built once per content of main.go.
pub fn launcher() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(build_launcher).clone()
}

fn build_launcher() -> PathBuf {
    require(have("go"), "the `go` command (package golang-go)");
    require(
        Path::new(GOVMOMI).is_dir(),
        &format!(
            "govmomi's simulator source at {GOVMOMI} (package golang-github-vmware-govmomi-dev)"
        ),
    );
    let src = std::fs::read(main_go()).expect("reading tests/vcsim/main.go");
    let hash = hex::encode(Sha256::digest(&src));
    let dir = Path::new(CACHE).join(&hash);
    let bin = dir.join("vcsim");
    if bin.is_file() {
        return bin;
    }
    std::fs::create_dir_all(CACHE).expect("creating /var/cache/v2k/vcsim");
    // Test binaries (and parallel tests) may build at once: one builds, the others
    // wait on the lock and then find the result.
    let lock = File::create(Path::new(CACHE).join(".lock")).expect("creating the build lock");
    lock.lock().expect("locking the build lock");
    if bin.is_file() {
        return bin;
    }
    let tmp = Path::new(CACHE).join(format!(".build-{}-{hash}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(tmp.join("gopath")).unwrap();
    let out = Command::new("go")
        .arg("build")
        .arg("-o")
        .arg(tmp.join("vcsim"))
        .arg(main_go())
        .env("GO111MODULE", "off")
        .env(
            "GOPATH",
            format!("{}:/usr/share/gocode", tmp.join("gopath").display()),
        )
        .env("GOCACHE", Path::new(CACHE).join("gocache"))
        .env("GOFLAGS", "")
        .output()
        .expect("running go build");
    assert!(
        out.status.success(),
        "building the vcsim launcher failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(tmp.join("gopath"));
    // Atomic: the directory appears complete or not at all.
    std::fs::rename(&tmp, &dir).expect("moving the built launcher into the cache");
    bin
}

/// The test PKI: a CA and a server certificate (RSA 2048, SAN 127.0.0.1) it signed.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub thumbprint: Thumbprint,
}

/// A TLS server configuration with the test PKI's certificate (for the tests' own
/// HTTPS servers and proxies in front of the simulator).
pub fn tls_server_config() -> Arc<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let pki = pki();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&pki.cert)
        .unwrap()
        .map(|c| c.unwrap())
        .collect();
    let key = PrivateKeyDer::from_pem_file(&pki.key).unwrap();
    Arc::new(
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap(),
    )
}

pub fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(make_pki)
}

fn openssl(args: &[&str], dir: &Path) {
    let o = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("missing prerequisite: the openssl command ({e})"));
    assert!(
        o.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn make_pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=v2k test CA",
        ],
        d,
    );
    openssl(
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "key.pem",
            "-out",
            "leaf.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
        d,
    );
    std::fs::write(
        d.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=critical,CA:FALSE\n\
         keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "cert.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
        d,
    );
    openssl(
        &[
            "x509", "-in", "cert.pem", "-outform", "DER", "-out", "cert.der",
        ],
        d,
    );
    let der = std::fs::read(d.join("cert.der")).unwrap();
    Pki {
        ca: d.join("ca.pem"),
        cert: d.join("cert.pem"),
        key: d.join("key.pem"),
        thumbprint: Thumbprint::of_der(&der),
        dir,
    }
}

/// A running simulator; killed (by PID) and reaped on drop.
pub struct Vcsim {
    child: Child,
    pub port: u16,
    pub tmp: tempfile::TempDir,
}

impl Vcsim {
    pub fn start() -> Vcsim {
        Self::start_with(&[])
    }

    /// [`Vcsim::start`] with more environment for the launcher (e.g.
    /// `VCSIM_REFUSE_QUERYPERF`, tests/vcsim/main.go).
    pub fn start_with(env: &[(&str, &str)]) -> Vcsim {
        let bin = launcher();
        let pki = pki();
        let tmp = tempfile::tempdir().unwrap();
        let mut child = Command::new(bin)
            .arg("-cert")
            .arg(&pki.cert)
            .arg("-key")
            .arg(&pki.key)
            .arg("-listen")
            .arg("127.0.0.1:0")
            .env("TMPDIR", tmp.path())
            .env("VCSIM_USER", USER)
            .env("VCSIM_PASSWORD", PASSWORD)
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(File::create(tmp.path().join("vcsim.log")).unwrap())
            .spawn()
            .expect("starting the vcsim launcher");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let mut guard = Vcsim {
            child,
            port: 0,
            tmp,
        };
        let line = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_default();
        let port = line
            .trim()
            .strip_prefix("https://127.0.0.1:")
            .and_then(|r| r.split('/').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| {
                let log =
                    std::fs::read_to_string(guard.tmp.path().join("vcsim.log")).unwrap_or_default();
                panic!("vcsim did not print its URL (got {line:?}); its log:\n{log}")
            });
        guard.port = port;
        guard
    }

    pub fn options(&self) -> Options {
        Options {
            host: "127.0.0.1".into(),
            port: self.port,
            tls: TlsMode::Verify {
                extra_ca: Some(pki().ca.clone()),
            },
        }
    }

    pub fn creds() -> Credentials {
        Credentials {
            user: USER.into(),
            password: Secret::new(PASSWORD),
        }
    }

    pub fn client(&self) -> Client {
        Client::connect(&self.options(), Self::creds()).expect("logging in to vcsim")
    }
}

impl Drop for Vcsim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP proxy in front of the simulator that cuts the first `cuts` connections
/// after they have carried `after` bytes from the server, to simulate a network
/// failure in the middle of a download (the TLS stream is simply cut).
pub struct CuttingProxy {
    pub port: u16,
    pub cut: Arc<AtomicUsize>,
    pub bytes: Arc<AtomicU64>,
}

impl CuttingProxy {
    pub fn start(upstream: u16, after: u64, cuts: usize) -> CuttingProxy {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let cut = Arc::new(AtomicUsize::new(0));
        let bytes = Arc::new(AtomicU64::new(0));
        let (c2, b2) = (cut.clone(), bytes.clone());
        std::thread::spawn(move || {
            for down in l.incoming() {
                let Ok(down) = down else { break };
                let Ok(up) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let (mut d2, mut u2) = (down.try_clone().unwrap(), up.try_clone().unwrap());
                // Client → server: plain copy.
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut d2, &mut u2);
                    let _ = u2.shutdown(std::net::Shutdown::Write);
                });
                let (cut, bytes) = (c2.clone(), b2.clone());
                let (mut up, mut down) = (up, down);
                // Server → client: counted, cut once past `after` while cuts remain.
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 64 * 1024];
                    let mut sent = 0u64;
                    loop {
                        let n = match up.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        if down.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        sent += n as u64;
                        bytes.fetch_add(n as u64, Ordering::Relaxed);
                        if sent > after && cut.load(Ordering::SeqCst) < cuts {
                            cut.fetch_add(1, Ordering::SeqCst);
                            break;
                        }
                    }
                    let _ = down.shutdown(std::net::Shutdown::Both);
                    let _ = up.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        CuttingProxy { port, cut, bytes }
    }
}

/// Deterministic disk content: pseudo-random data with zero runs.
pub fn pattern(size: usize, seed: u32) -> Vec<u8> {
    let mut v = vec![0u8; size];
    let mut x = seed | 1;
    for (i, b) in v.iter_mut().enumerate() {
        // Every fourth MiB is zeros, to exercise zero-cluster skipping.
        if (i >> 20) % 4 == 2 {
            continue;
        }
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *b = x as u8;
    }
    v
}

pub fn qemu_img(args: &[&str]) {
    let o = Command::new("qemu-img")
        .args(args)
        .output()
        .expect("missing prerequisite: qemu-img (package qemu-utils)");
    assert!(
        o.status.success(),
        "qemu-img {args:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The simulator's datastore directory on this host (`$TMPDIR/govcsim-DC0-LocalDS_0-*`).
pub fn datastore_dir(sim: &Vcsim) -> PathBuf {
    std::fs::read_dir(sim.tmp.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("govcsim-DC0-LocalDS_0-"))
        })
        .expect("the simulator's datastore directory")
}

/// Writes a flat disk (descriptor + extent, as ESXi lays them out) into the
/// simulator's datastore and returns how to find it.
pub fn put_flat_disk(sim: &Vcsim, name: &str, data: &[u8]) -> v2k_vsphere::DiskSource {
    let dir = datastore_dir(sim).join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("{name}-flat.vmdk")), data).unwrap();
    let desc = format!(
        "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n\
         createType=\"vmfs\"\n\n# Extent description\nRW {} VMFS \"{name}-flat.vmdk\"\n\n\
         ddb.adapterType = \"pvscsi\"\n",
        data.len() / 512
    );
    std::fs::write(dir.join(format!("{name}.vmdk")), desc).unwrap();
    v2k_vsphere::DiskSource {
        descriptor: v2k_vsphere::DatastorePath::parse(&format!("[LocalDS_0] {name}/{name}.vmdk"))
            .unwrap(),
        datacenter: "DC0".into(),
        host: None,
    }
}

/// Creates a powered-off VM `name` in DC0 on host DC0_H0 (CreateVM_Task) whose disks are
/// the given datastore files (`[LocalDS_0] dir/disk.vmdk`, capacity in bytes): PVSCSI,
/// one VMXNET3 NIC on "VM Network" with the static `mac`, BIOS, 2 vCPUs, 1 GiB.
pub fn create_vm_with_disks(c: &Client, name: &str, disks: &[(String, u64)], mac: &str) {
    create_vm_on_host(c, name, disks, mac, "DC0_H0");
}

/// [`create_vm_with_disks`] on the simulated ESXi host `host` (`DC0_H0`, the
/// standalone one, or a cluster member `DC0_C0_H0`..`DC0_C0_H2`).
pub fn create_vm_on_host(c: &Client, name: &str, disks: &[(String, u64)], mac: &str, host: &str) {
    use v2k_vsphere::client::PropertySpec;
    use v2k_vsphere::MoRef;
    let mut devices = String::from(
        "<deviceChange><operation>add</operation><device xsi:type=\"ParaVirtualSCSIController\">\
         <key>-100</key><busNumber>0</busNumber><sharedBus>noSharing</sharedBus></device></deviceChange>",
    );
    for (i, (file, size)) in disks.iter().enumerate() {
        devices.push_str(&format!(
            "<deviceChange><operation>add</operation><device xsi:type=\"VirtualDisk\"><key>{}</key>\
             <backing xsi:type=\"VirtualDiskFlatVer2BackingInfo\"><fileName>{file}</fileName>\
             <diskMode>persistent</diskMode><thinProvisioned>false</thinProvisioned></backing>\
             <controllerKey>-100</controllerKey><unitNumber>{i}</unitNumber>\
             <capacityInKB>{}</capacityInKB><capacityInBytes>{size}</capacityInBytes></device></deviceChange>",
            -101 - i as i32,
            size / 1024,
        ));
    }
    devices.push_str(&format!(
        "<deviceChange><operation>add</operation><device xsi:type=\"VirtualVmxnet3\"><key>-200</key>\
         <backing xsi:type=\"VirtualEthernetCardNetworkBackingInfo\"><deviceName>VM Network</deviceName></backing>\
         <addressType>manual</addressType><macAddress>{mac}</macAddress></device></deviceChange>"
    ));
    let spec = format!(
        "<config><name>{name}</name><guestId>otherLinux64Guest</guestId>\
         <files><vmPathName>[LocalDS_0] {name}/{name}.vmx</vmPathName></files>\
         <numCPUs>2</numCPUs><numCoresPerSocket>1</numCoresPerSocket><memoryMB>1024</memoryMB>\
         {devices}<firmware>bios</firmware></config>"
    );
    let find = |kind: &str, wanted: &str| -> MoRef {
        let root = c.content().unwrap().root_folder;
        c.block_on(c.session().retrieve_in_container(
            &root,
            &[PropertySpec {
                kind: kind.into(),
                paths: vec!["name".into()],
            }],
        ))
        .unwrap()
        .into_iter()
        .find(|o| o.text("name") == Some(wanted))
        .unwrap_or_else(|| panic!("no {kind} {wanted}"))
        .obj
    };
    let dc = find("Datacenter", "DC0");
    let o = c
        .block_on(c.session().retrieve_one(
            &dc,
            &PropertySpec {
                kind: "Datacenter".into(),
                paths: vec!["vmFolder".into()],
            },
        ))
        .unwrap();
    let folder = MoRef::from_element(o.get("vmFolder").unwrap()).unwrap();
    let pool = find("ResourcePool", "Resources");
    let host = find("HostSystem", host);
    let r = c
        .call(
            "CreateVM_Task",
            &folder,
            &format!("{spec}{}{}", pool.to_xml("pool"), host.to_xml("host")),
        )
        .unwrap();
    let task = MoRef::from_element(r.child("returnval").unwrap()).unwrap();
    c.wait_for_task(&task, Duration::from_secs(30)).unwrap();
}

/// The VM `name` of DC0 (a failure when it does not exist).
pub fn vm_ref(c: &Client, name: &str) -> v2k_vsphere::MoRef {
    c.find_by_inventory_path(&format!("DC0/vm/{name}"))
        .unwrap()
        .unwrap_or_else(|| panic!("no VM {name}"))
}

/// The VM's `runtime.powerState`: `poweredOn`, `poweredOff` or `suspended`.
pub fn power_state(c: &Client, name: &str) -> String {
    let o = c
        .block_on(c.session().retrieve_one(
            &vm_ref(c, name),
            &v2k_vsphere::client::PropertySpec {
                kind: "VirtualMachine".into(),
                paths: vec!["runtime.powerState".into()],
            },
        ))
        .unwrap();
    o.text("runtime.powerState").unwrap().trim().to_string()
}

/// Powers the VM on (PowerOnVM_Task, waited for) and checks that it runs.
pub fn power_on(c: &Client, name: &str) {
    let r = c.call("PowerOnVM_Task", &vm_ref(c, name), "").unwrap();
    let task = v2k_vsphere::MoRef::from_element(r.child("returnval").unwrap()).unwrap();
    c.wait_for_task(&task, Duration::from_secs(30)).unwrap();
    assert_eq!(power_state(c, name), "poweredOn");
}
