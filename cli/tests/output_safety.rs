//! End-to-end tests of what `v2k convert` guarantees about its outputs (docs/convert.md,
//! "Security"): nothing is written through a link planted in the output directory, only
//! a regular file is replaced, a block device is written into and never replaced, a disk
//! appears only with its manifest, and two sources never share one output.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const V2K: &str = env!("CARGO_BIN_EXE_v2k");
const MIB: u64 = 1 << 20;

fn run(dir: &Path, args: &[&str]) -> Output {
    Command::new(V2K)
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn qemu_img(dir: &Path, args: &[&str]) {
    let out = Command::new("qemu-img")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("qemu-img is required (scripts/setup.sh)");
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A raw disk of `size` bytes (data at the start and the end, a hole between) and its
/// monolithicSparse VMDK `NAME.vmdk`; returns the raw bytes.
fn make_vmdk(dir: &Path, name: &str, size: u64, seed: u8) -> Vec<u8> {
    let mut raw = vec![0u8; size as usize];
    for (i, b) in raw[..256 * 1024].iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(31).wrapping_add(seed);
    }
    let n = raw.len();
    raw[n - 10..].copy_from_slice(b"last bytes");
    std::fs::write(dir.join(format!("{name}.raw")), &raw).unwrap();
    qemu_img(
        dir,
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "vmdk",
            "-o",
            "subformat=monolithicSparse",
            &format!("{name}.raw"),
            &format!("{name}.vmdk"),
        ],
    );
    std::fs::remove_file(dir.join(format!("{name}.raw"))).unwrap();
    raw
}

/// Names in `dir` that are v2k temporaries or locks.
fn temporaries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".v2k-"))
        .collect()
}

/// A victim file outside the output directory, and what must not change about it.
struct Victim {
    path: PathBuf,
    mtime: (i64, i64),
}

impl Victim {
    fn new(dir: &Path) -> Victim {
        let path = dir.join("victim");
        std::fs::write(&path, b"precious").unwrap();
        let m = std::fs::metadata(&path).unwrap();
        Victim {
            path,
            mtime: (m.mtime(), m.mtime_nsec()),
        }
    }

    fn assert_untouched(&self) {
        assert_eq!(std::fs::read(&self.path).unwrap(), b"precious");
        let m = std::fs::metadata(&self.path).unwrap();
        assert_eq!(
            (m.mtime(), m.mtime_nsec()),
            self.mtime,
            "victim's mtime changed"
        );
    }
}

#[test]
fn links_planted_at_every_name_v2k_might_use_are_never_written_through() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    make_vmdk(d, "disk", 8 * MIB, 1);
    let victim = Victim::new(d);
    let out = d.join("out");
    std::fs::create_dir(&out).unwrap();
    // The example (the old fixed temporary name), the manifest's, and names
    // shaped like the new random ones.
    for name in [
        ".disk.qcow2.v2k-partial",
        ".disk.qcow2.manifest.json.v2k-partial",
        ".disk.qcow2.v2k-0000000000000000",
        ".disk.qcow2.manifest.json.v2k-0000000000000000",
    ] {
        std::os::unix::fs::symlink(&victim.path, out.join(name)).unwrap();
    }
    let o = run(d, &["convert", "disk.vmdk", "-o", "out/disk.qcow2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    victim.assert_untouched();
    qemu_img(d, &["check", "-f", "qcow2", "out/disk.qcow2"]);
    qemu_img(
        d,
        &[
            "compare",
            "-f",
            "vmdk",
            "-F",
            "qcow2",
            "disk.vmdk",
            "out/disk.qcow2",
        ],
    );
    assert!(out.join("disk.qcow2.manifest.json").is_file());

    // A link at the lock name, the final name or the manifest's name: refused, --force
    // or not, and still nothing written through it.
    for (planted, target) in [
        (".d2.qcow2.v2k-lock", "out/d2.qcow2"),
        ("d3.qcow2", "out/d3.qcow2"),
        ("d4.qcow2.manifest.json", "out/d4.qcow2"),
    ] {
        std::os::unix::fs::symlink(&victim.path, out.join(planted)).unwrap();
        for force in [false, true] {
            let mut args = vec!["convert", "disk.vmdk", "-o", target];
            if force {
                args.push("--force");
            }
            let o = run(d, &args);
            let err = stderr(&o);
            assert_eq!(o.status.code(), Some(2), "{planted} {force}: {err}");
            assert!(err.contains("symbolic link"), "{planted}: {err}");
            victim.assert_untouched();
            assert!(
                std::fs::symlink_metadata(out.join(planted))
                    .unwrap()
                    .file_type()
                    .is_symlink(),
                "{planted} was replaced"
            );
        }
    }
    // d4's disk must not be visible without its manifest.
    assert!(!out.join("d4.qcow2").exists());
}

#[test]
fn force_replaces_only_a_regular_file_and_refuses_special_files() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    make_vmdk(d, "disk", 4 * MIB, 2);
    // (An existing directory as `-o` is where the output goes, by design; a directory
    // under an output's own name is refused by the helper's unit tests and by the
    // manifest test below.)
    assert!(Command::new("mkfifo")
        .arg(d.join("fifo.raw"))
        .status()
        .unwrap()
        .success());
    for (target, kind) in [("fifo.raw", "FIFO"), ("/dev/null", "character device")] {
        let o = run(
            d,
            &[
                "convert",
                "disk.vmdk",
                "-o",
                target,
                "--format",
                "raw",
                "--force",
            ],
        );
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{target}: {err}");
        assert!(err.contains(kind), "{target}: {err}");
    }
    assert!(std::fs::metadata(d.join("fifo.raw"))
        .unwrap()
        .file_type()
        .is_fifo());
    assert!(std::fs::metadata("/dev/null")
        .unwrap()
        .file_type()
        .is_char_device());
    assert!(temporaries(d).is_empty(), "{:?}", temporaries(d));
}

/// A loop device over the test's own file, detached on drop.
struct Loop(String);

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

#[test]
fn a_block_device_is_written_into_whole_with_force_and_never_replaced() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let size = 8 * MIB;
    let raw = make_vmdk(d, "disk", size, 3);
    // Old data everywhere: the disk's holes must come out as zeros, not as this.
    let backing = d.join("backing.img");
    std::fs::write(&backing, vec![0xAAu8; 12 * MIB as usize]).unwrap();
    let o = Command::new("losetup")
        .args(["-f", "--show"])
        .arg(&backing)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "losetup (needs root, as the suite does): {}",
        stderr(&o)
    );
    let dev = String::from_utf8(o.stdout).unwrap().trim().to_string();
    let _loop = Loop(dev.clone());
    let dev_name = Path::new(&dev)
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();

    // Without --force: refused, the device untouched.
    let o = run(d, &["convert", "disk.vmdk", "-o", &dev, "--format", "raw"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--force"), "{}", stderr(&o));
    // QCOW2 into a device: refused (a device is never replaced by a file).
    let o = run(d, &["convert", "disk.vmdk", "-o", &dev, "--force"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("block device"), "{}", stderr(&o));
    assert_eq!(std::fs::read(&dev).unwrap()[0], 0xAA);

    let o = run(
        d,
        &[
            "convert",
            "disk.vmdk",
            "-o",
            &dev,
            "--format",
            "raw",
            "--force",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("verified"));
    let meta = std::fs::metadata(&dev).unwrap();
    assert!(meta.file_type().is_block_device(), "the node was replaced");
    let content = std::fs::read(&dev).unwrap();
    assert_eq!(
        &content[..size as usize],
        &raw[..],
        "disk content in the device"
    );
    // Past the disk, the device keeps what it held.
    assert!(content[size as usize..].iter().all(|&b| b == 0xAA));
    // Nothing was created beside the device.
    for n in [
        format!(".{dev_name}.v2k-lock"),
        format!("{dev_name}.manifest.json"),
    ] {
        assert!(!Path::new("/dev").join(&n).exists(), "/dev/{n} created");
    }
    assert!(
        !std::fs::read_dir("/dev").unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with(&format!(".{dev_name}.v2k-"))),
        "a temporary was created in /dev"
    );
}

#[test]
fn a_failure_at_the_manifest_leaves_no_disk_and_a_rerun_succeeds() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    make_vmdk(d, "disk", 4 * MIB, 4);
    // The manifest cannot be committed (its name is taken by a directory).
    std::fs::create_dir(d.join("out.qcow2.manifest.json")).unwrap();
    let o = run(d, &["convert", "disk.vmdk", "-o", "out.qcow2"]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("manifest.json"), "{err}");
    assert!(
        !d.join("out.qcow2").exists(),
        "disk committed without its manifest"
    );
    assert!(temporaries(d).is_empty(), "{:?}", temporaries(d));
    // Once the cause is gone, a plain rerun (no --force) works.
    std::fs::remove_dir(d.join("out.qcow2.manifest.json")).unwrap();
    let o = run(d, &["convert", "disk.vmdk", "-o", "out.qcow2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(d.join("out.qcow2").is_file());
    assert!(d.join("out.qcow2.manifest.json").is_file());
}

#[test]
fn two_sources_with_one_output_name_are_refused_before_anything_is_written() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    for sub in ["a", "b"] {
        std::fs::create_dir(d.join(sub)).unwrap();
        make_vmdk(&d.join(sub), "x", 4 * MIB, sub.as_bytes()[0]);
    }
    for force in [false, true] {
        let mut args = vec!["convert", "a/x.vmdk", "b/x.vmdk", "-o", "out"];
        if force {
            args.push("--force");
        }
        let o = run(d, &args);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "force={force}: {err}");
        assert!(
            err.contains("a/x.vmdk") && err.contains("b/x.vmdk"),
            "both sources named: {err}"
        );
        assert!(!err.contains("another v2k process"), "{err}");
        assert!(!d.join("out").exists(), "something was written");
    }
}
