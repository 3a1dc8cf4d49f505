//! Differential tests: images made by qemu-img from deterministic patterns in every
//! VMDK subformat it writes (plus the ESXi `vmfs` layout, split extents and
//! snapshot chains), converted by v2k, then checked by `qemu-img check`,
//! `qemu-img compare`, and the independent Python blkhash.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use v2k_converters::convert::{convert, Format, Job, NoProgress, Options};
use v2k_converters::vmdk::{ByteRange, Source};

const MIB: u64 = 1 << 20;

fn convert_with(src: &Path, out: &Path, opts: &Options) -> v2k_converters::manifest::Manifest {
    let job = Job {
        source: Source::file(src),
        output: out.to_path_buf(),
    };
    convert(&job, opts, 0, &NoProgress)
        .unwrap_or_else(|e| panic!("converting {}: {e}", src.display()))
}

fn vmdk_from_raw(raw: &Path, dir: &Path, subformat: &str) -> PathBuf {
    let out = dir.join(format!("{subformat}.vmdk"));
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "vmdk",
        "-o",
        &format!("subformat={subformat}"),
        raw.to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    out
}

/// Converts `vmdk` and checks the output against `reference` (any format qemu reads).
fn check_round_trip(vmdk: &Path, reference: &Path, ref_raw: &Path, opts: &Options) {
    let ext = opts.format.name();
    let out = vmdk.with_extension(format!("out.{ext}"));
    let m = convert_with(vmdk, &out, opts);
    assert_same_disk(reference, &out, ext);
    assert!(m.hash.verified);
    assert_eq!(m.hash.output.as_deref(), Some(m.hash.source.as_str()));
    assert_eq!(
        m.hash.source,
        blkhash_py(ref_raw),
        "source hash differs from the Python reference"
    );
    std::fs::remove_file(&out).unwrap();
}

/// A raw file of the virtual disk as qemu sees it (VMDK capacity is sector-rounded).
fn reference_raw(vmdk: &Path, dir: &Path) -> PathBuf {
    let r = dir.join("reference.raw");
    qemu_img(&[
        "convert",
        "-O",
        "raw",
        vmdk.to_str().unwrap(),
        r.to_str().unwrap(),
    ]);
    r
}

#[test]
fn every_subformat_converts_to_an_identical_qcow2() {
    let t = tempfile::tempdir().unwrap();
    let raw = t.path().join("src.raw");
    write_pattern(&raw, 37 * MIB + 3 * 512, 7);
    for sf in [
        "monolithicSparse",
        "streamOptimized",
        "monolithicFlat",
        "twoGbMaxExtentSparse",
        "twoGbMaxExtentFlat",
    ] {
        let vmdk = vmdk_from_raw(&raw, t.path(), sf);
        let reference = reference_raw(&vmdk, t.path());
        check_round_trip(&vmdk, &raw, &reference, &Options::default());
    }
}

#[test]
fn cluster_sizes_compression_and_raw_output_all_round_trip() {
    let t = tempfile::tempdir().unwrap();
    let raw = t.path().join("src.raw");
    // 9 MiB with 512-byte clusters spans many refcount windows (one per 128 KiB of
    // host file) and many L2 tables (one per 32 KiB of disk).
    write_pattern(&raw, 9 * MIB + 512, 11);
    let vmdk = vmdk_from_raw(&raw, t.path(), "streamOptimized");
    let reference = reference_raw(&vmdk, t.path());
    for cs in [512u64, 4096, 65536, 2 * MIB] {
        for compress in [false, true] {
            let opts = Options {
                cluster_size: cs,
                compress,
                ..Options::default()
            };
            check_round_trip(&vmdk, &raw, &reference, &opts);
        }
    }
    let opts = Options {
        format: Format::Raw,
        ..Options::default()
    };
    check_round_trip(&vmdk, &raw, &reference, &opts);
}

#[test]
fn raw_output_is_sparse() {
    let t = tempfile::tempdir().unwrap();
    let raw = t.path().join("src.raw");
    write_pattern(&raw, 64 * MIB, 3);
    let vmdk = vmdk_from_raw(&raw, t.path(), "monolithicSparse");
    let out = t.path().join("out.raw");
    let m = convert_with(
        &vmdk,
        &out,
        &Options {
            format: Format::Raw,
            ..Options::default()
        },
    );
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(&out).unwrap();
    assert_eq!(meta.len(), 64 * MIB);
    assert!(
        meta.blocks() * 512 < 40 * MIB,
        "raw output is not sparse: {} bytes allocated",
        meta.blocks() * 512
    );
    assert!(m.output.data_bytes < 40 * MIB);
}

#[test]
fn esxi_vmfs_descriptor_with_flat_extent_converts() {
    let t = tempfile::tempdir().unwrap();
    let raw = t.path().join("src.raw");
    write_pattern(&raw, 20 * MIB, 5);
    let flat = t.path().join("web01-flat.vmdk");
    std::fs::copy(&raw, &flat).unwrap();
    let desc = t.path().join("web01.vmdk");
    std::fs::write(
        &desc,
        format!(
            "# Disk DescriptorFile\nversion=1\nencoding=\"UTF-8\"\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"vmfs\"\n\n# Extent description\nRW {} VMFS \"web01-flat.vmdk\"\n\n# The Disk Data Base\n#DDB\n\nddb.adapterType = \"pvscsi\"\nddb.thinProvisioned = \"1\"\nddb.virtualHWVersion = \"19\"\n",
            20 * MIB / 512
        ),
    )
    .unwrap();
    let info = v2k_converters::vmdk::inspect_path(&desc).unwrap();
    assert_eq!(info.create_type, "vmfs");
    assert_eq!(info.adapter_type.as_deref(), Some("pvscsi"));
    check_round_trip(&desc, &raw, &raw, &Options::default());
}

#[test]
fn snapshot_chain_is_consolidated_into_one_output() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let raw = d.join("src.raw");
    write_pattern(&raw, 16 * MIB, 9);
    vmdk_from_raw(&raw, d, "monolithicSparse");
    std::fs::rename(d.join("monolithicSparse.vmdk"), d.join("base.vmdk")).unwrap();
    // Two deltas, each overwriting part of the disk, with relative parent hints.
    for (delta, parent, pattern, at) in [
        ("snap-000001.vmdk", "base.vmdk", "0xab", "1M"),
        ("snap-000002.vmdk", "snap-000001.vmdk", "0xcd", "1536k"),
    ] {
        run(Command::new("qemu-img").current_dir(d).args([
            "create", "-q", "-f", "vmdk", "-b", parent, "-F", "vmdk", delta,
        ]));
        run(Command::new("qemu-io").current_dir(d).args([
            "-f",
            "vmdk",
            "-c",
            &format!("write -P {pattern} {at} 1M"),
            delta,
        ]));
    }
    let top = d.join("snap-000002.vmdk");
    let info = v2k_converters::vmdk::inspect_path(&top).unwrap();
    assert_eq!(info.parent_chain.len(), 2, "{:?}", info.parent_chain);
    let reference = reference_raw(&top, d);
    check_round_trip(&top, &reference, &reference, &Options::default());
}

/// Deltas in every sparse layout over parents in every layout. Descriptor-based
/// sparse deltas (`twoGbMaxExtentSparse` here; ESXi's `vmfsSparse` has the same
/// shape) once came out as the delta alone — vmdk-core treats them as flat, so its
/// chain reader never reached the parent, and verification could not tell (it
/// re-reads through the same reader). Also: a delta's zeroed grain (grain-table
/// entry 1) must read as zeros, not as the parent's data; and a split delta of more
/// than 2 GiB, whose writes straddle its first extent's end.
#[test]
fn deltas_of_every_layout_over_parents_of_every_layout_read_through_to_the_parent() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let io = |img: &str, cmds: &[&str]| {
        let mut c = Command::new("qemu-io");
        c.current_dir(d).args(["-f", "vmdk"]);
        for cmd in cmds {
            c.args(["-c", cmd]);
        }
        run(c.arg(img));
    };
    // qemu-img create -f vmdk -o OPTIONS ...
    let create = |args: &[&str]| {
        run(Command::new("qemu-img")
            .current_dir(d)
            .args(["create", "-q", "-f", "vmdk", "-o"])
            .args(args));
    };
    let cases: &[(&str, &str, &str, u64)] = &[
        ("monolithicFlat", "twoGbMaxExtentSparse", "", 6 * MIB),
        ("monolithicSparse", "twoGbMaxExtentSparse", "", 6 * MIB),
        ("twoGbMaxExtentFlat", "twoGbMaxExtentSparse", "", 6 * MIB),
        ("twoGbMaxExtentSparse", "twoGbMaxExtentSparse", "", 6 * MIB),
        ("monolithicFlat", "monolithicSparse", "", 6 * MIB),
        (
            "monolithicSparse",
            "monolithicSparse",
            ",zeroed_grain=on",
            6 * MIB,
        ),
        (
            "monolithicSparse",
            "twoGbMaxExtentSparse",
            "",
            2048 * MIB + 4 * MIB,
        ),
    ];
    for (n, (parent, child, opts, size)) in cases.iter().enumerate() {
        let base = format!("b{n}.vmdk");
        let delta = format!("c{n}.vmdk");
        create(&[&format!("subformat={parent}"), &base, &size.to_string()]);
        let tail = size - 3 * MIB;
        io(
            &base,
            &[
                "write -P 0x11 0 2M",
                "write -P 0x22 3M 100k",
                &format!("write -P 0x33 {tail} 2M"),
            ],
        );
        create(&[
            &format!("subformat={child}{opts}"),
            "-b",
            &base,
            "-F",
            "vmdk",
            &delta,
        ]);
        let mid = size - 2 * MIB - 32 * 1024;
        io(
            &delta,
            &[
                "write -P 0x5a 1M 192k",
                "write -z 3M 64k",
                &format!("write -P 0x66 {mid} 64k"),
            ],
        );
        let top = d.join(&delta);
        let reference = reference_raw(&top, d);
        check_round_trip(&top, &reference, &reference, &Options::default());
        // The parent's data is really there (the case that failed silently).
        let out = d.join(format!("c{n}.check.qcow2"));
        convert_with(&top, &out, &Options::default());
        let o = Command::new("qemu-io")
            .args([
                "-f",
                "qcow2",
                "-c",
                "read -P 0x11 0 1M",
                "-c",
                "read -P 0 3M 64k",
            ])
            .arg(&out)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(
            o.status.success() && !text.contains("Pattern verification failed"),
            "{parent} <- {child}{opts}: {text}"
        );
        std::fs::remove_file(&out).unwrap();
        std::fs::remove_file(&reference).unwrap();
    }
}

#[test]
fn stream_optimized_disk_is_read_in_place_from_an_archive_member() {
    let t = tempfile::tempdir().unwrap();
    let raw = t.path().join("src.raw");
    write_pattern(&raw, 12 * MIB, 13);
    let vmdk = vmdk_from_raw(&raw, t.path(), "streamOptimized");
    // An OVA is a tar; put the disk after another member so its offset is not 0.
    std::fs::write(t.path().join("vm.ovf"), b"<Envelope/>").unwrap();
    run(Command::new("tar").current_dir(t.path()).args([
        "--format=ustar",
        "-cf",
        "vm.ova",
        "vm.ovf",
        "streamOptimized.vmdk",
    ]));
    let ova = t.path().join("vm.ova");
    // ustar: 512-byte header + data padded to 512 for vm.ovf, then the disk's header.
    let offset = 512 + 512 + 512;
    let len = std::fs::metadata(&vmdk).unwrap().len();
    let job = Job {
        source: Source {
            path: ova.clone(),
            range: Some(ByteRange { offset, len }),
        },
        output: t.path().join("out.qcow2"),
    };
    let m = convert(&job, &Options::default(), 0, &NoProgress).unwrap();
    let reference = reference_raw(&vmdk, t.path());
    assert_same_disk(&reference, &t.path().join("out.qcow2"), "qcow2");
    assert_eq!(m.hash.source, blkhash_py(&reference));
}

#[test]
fn empty_and_huge_sparse_disks_convert() {
    let t = tempfile::tempdir().unwrap();
    for (name, size) in [("empty", "0"), ("huge", "1T")] {
        let vmdk = t.path().join(format!("{name}.vmdk"));
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "vmdk",
            "-o",
            "subformat=monolithicSparse",
            vmdk.to_str().unwrap(),
            size,
        ]);
        let out = t.path().join(format!("{name}.qcow2"));
        let m = convert_with(&vmdk, &out, &Options::default());
        // qemu cannot reopen the 0-byte VMDK it made; compare with an empty raw.
        let reference = if size == "0" {
            let r = t.path().join("empty.raw");
            std::fs::write(&r, b"").unwrap();
            r
        } else {
            vmdk.clone()
        };
        assert_same_disk(&reference, &out, "qcow2");
        assert_eq!(m.output.data_bytes, 0);
        assert!(
            m.output.file_size < 4 * MIB,
            "{name}: {} bytes",
            m.output.file_size
        );
    }
}
