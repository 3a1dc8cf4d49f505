//! Hostile directories: links, FIFOs, directories and devices planted under every name
//! the helper could use; the victim outside must stay untouched.

use super::*;
use rustix::fs::CWD;
use std::os::unix::fs::{symlink, FileTypeExt, PermissionsExt};

fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let victim = d.path().join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    (d, out, victim)
}

fn leftovers(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".v2k-"))
        .collect();
    v.sort();
    v
}

#[test]
fn nothing_under_the_final_name_until_commit_and_no_temp_left_after() {
    let (_d, out, _) = setup();
    let p = out.join("disk.qcow2");
    let f = OutFile::create(&p, false).unwrap();
    f.file().write_all(b"data").unwrap();
    assert!(!p.exists());
    assert!(f.tmp_path().exists());
    assert!(leftovers(&out).iter().any(|n| n.ends_with(".v2k-lock")));
    f.commit().unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), b"data");
    assert_eq!(leftovers(&out), Vec::<String>::new());
}

#[test]
fn a_dropped_file_removes_its_temporary_and_lock() {
    let (_d, out, _) = setup();
    let p = out.join("disk.qcow2");
    {
        let f = OutFile::create(&p, false).unwrap();
        f.file().write_all(b"half").unwrap();
    }
    assert!(!p.exists());
    assert_eq!(leftovers(&out), Vec::<String>::new());
}

#[test]
fn temporary_names_are_fresh_and_unpredictable() {
    let (_d, out, _) = setup();
    let a = OutFile::staged(&out.join("x"), b"", true).unwrap();
    let b = OutFile::staged(&out.join("x"), b"", true).unwrap();
    assert_ne!(a.tmp_path(), b.tmp_path());
    let n = a
        .tmp_path()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(
        n.starts_with(".x.v2k-") && n.len() == ".x.v2k-".len() + 16,
        "{n}"
    );
}

#[test]
fn a_link_planted_at_a_temporary_name_is_never_opened() {
    let (_d, out, victim) = setup();
    let place = Place::open(&out.join("disk.qcow2")).unwrap();
    // Whatever name is drawn, O_EXCL|O_NOFOLLOW refuses one that exists: plant the
    // old fixed name and a would-be random one, and try to open them as temporaries.
    for planted in [
        ".disk.qcow2.v2k-partial",
        ".disk.qcow2.v2k-0123456789abcdef",
    ] {
        symlink(&victim, out.join(planted)).unwrap();
        let e = open_tmp(&place, OsStr::new(planted)).unwrap_err();
        assert_eq!(e, Errno::EXIST);
    }
    // And the helper itself, with those planted, writes its own file.
    write_atomic(&out.join("disk.qcow2"), b"new", false).unwrap();
    assert_eq!(std::fs::read(out.join("disk.qcow2")).unwrap(), b"new");
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
}

#[test]
fn a_link_planted_at_the_lock_name_is_refused() {
    let (_d, out, victim) = setup();
    symlink(&victim, out.join(".disk.qcow2.v2k-lock")).unwrap();
    let e = OutFile::create(&out.join("disk.qcow2"), true)
        .err()
        .unwrap();
    assert!(matches!(e, Error::NotRegular { .. }), "{e}");
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
}

#[test]
fn a_fifo_planted_at_the_lock_name_is_refused_without_hanging() {
    let (_d, out, _) = setup();
    rustix::fs::mkfifoat(CWD, out.join(".d.v2k-lock"), Mode::from_raw_mode(0o600)).unwrap();
    let e = OutFile::create(&out.join("d"), true).err().unwrap();
    assert!(e.to_string().contains("FIFO"), "{e}");
}

#[test]
fn a_link_at_the_final_name_is_refused_even_with_overwrite_and_never_followed() {
    let (_d, out, victim) = setup();
    let p = out.join("vm.json");
    symlink(&victim, &p).unwrap();
    for overwrite in [false, true] {
        let e = write_atomic(&p, b"x", overwrite).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        let e = OutFile::create(&p, overwrite).err().unwrap();
        assert!(e.to_string().contains("symbolic link"), "{e}");
    }
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    assert!(std::fs::symlink_metadata(&p)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(leftovers(&out), Vec::<String>::new());
}

#[test]
fn a_fifo_directory_or_socket_at_the_final_name_is_refused() {
    let (_d, out, _) = setup();
    let fifo = out.join("fifo");
    rustix::fs::mkfifoat(CWD, &fifo, Mode::from_raw_mode(0o600)).unwrap();
    let dir = out.join("dir");
    std::fs::create_dir(&dir).unwrap();
    let sock = out.join("sock");
    let _l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    for (p, kind) in [(&fifo, "FIFO"), (&dir, "directory"), (&sock, "socket")] {
        let e = write_atomic(p, b"x", true).unwrap_err();
        assert!(e.to_string().contains(kind), "{e}");
    }
    assert!(std::fs::symlink_metadata(&fifo)
        .unwrap()
        .file_type()
        .is_fifo());
    assert!(dir.is_dir());
}

#[test]
fn a_device_at_the_final_name_is_refused() {
    // /dev/null is a character device everywhere; link it in and try to replace it.
    let e = write_atomic(Path::new("/dev/null"), b"x", true).unwrap_err();
    assert!(e.to_string().contains("character device"), "{e}");
    let e = OutFile::create_allowing_device(Path::new("/dev/null"), true)
        .err()
        .unwrap();
    assert!(e.to_string().contains("character device"), "{e}");
}

#[test]
fn overwrite_replaces_only_a_regular_file_and_existing_is_refused_without_it() {
    let (_d, out, _) = setup();
    let p = out.join("state.json");
    std::fs::write(&p, b"old").unwrap();
    assert!(matches!(
        write_atomic(&p, b"new", false).unwrap_err(),
        Error::Exists(_)
    ));
    assert_eq!(std::fs::read(&p).unwrap(), b"old");
    write_atomic(&p, b"new", true).unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), b"new");
}

#[test]
fn a_second_writer_of_the_same_output_is_refused_as_busy() {
    let (_d, out, _) = setup();
    let p = out.join("disk.qcow2");
    let a = OutFile::create(&p, true).unwrap();
    let e = OutFile::create(&p, true).err().unwrap();
    assert!(matches!(e, Error::Busy(_)), "{e}");
    drop(a);
    OutFile::create(&p, true).unwrap().commit().unwrap();
}

#[test]
fn the_rename_refuses_a_final_name_that_appeared_meanwhile() {
    let (_d, out, _) = setup();
    let p = out.join("disk.raw");
    let f = OutFile::create(&p, false).unwrap();
    std::fs::write(&p, b"theirs").unwrap();
    assert!(matches!(f.commit().unwrap_err(), Error::Exists(_)));
    assert_eq!(std::fs::read(&p).unwrap(), b"theirs");
    assert_eq!(leftovers(&out), Vec::<String>::new());
}

#[test]
fn mode_bits_are_set_exactly() {
    let (_d, out, _) = setup();
    let p = out.join("run-qemu.sh");
    write_atomic_mode(&p, b"#!/bin/sh\n", false, 0o755).unwrap();
    let m = std::fs::metadata(&p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(m, 0o755);
    let q = out.join("secret.json");
    write_atomic_mode(&q, b"{}", false, 0o600).unwrap();
    assert_eq!(
        std::fs::metadata(&q).unwrap().permissions().mode() & 0o7777,
        0o600
    );
}

#[test]
fn a_group_is_all_or_nothing() {
    let (_d, out, _) = setup();
    let manifest = out.join("disk.qcow2.manifest.json");
    let disk = out.join("disk.qcow2");
    let m = OutFile::staged(&manifest, b"{}", false).unwrap();
    let d = OutFile::create(&disk, false).unwrap();
    d.file().write_all(b"disk").unwrap();
    // The disk's name becomes taken after staging: its rename fails, and the manifest
    // already renamed is removed again.
    std::fs::create_dir(&disk).unwrap();
    assert!(commit_all(vec![m, d]).is_err());
    assert!(!manifest.exists());
    assert!(disk.is_dir());
    assert_eq!(leftovers(&out), Vec::<String>::new());
}

#[test]
fn logs_refuse_links_fifos_and_hard_links_and_append_otherwise() {
    let (_d, out, victim) = setup();
    let link = out.join("hook.log");
    symlink(&victim, &link).unwrap();
    assert!(open_append(&link).is_err());
    assert!(create_new(&link, 0o600).is_err());
    let hard = out.join("hard.log");
    std::fs::hard_link(&victim, &hard).unwrap();
    let e = open_append(&hard).unwrap_err();
    assert!(e.to_string().contains("hard link"), "{e}");
    let fifo = out.join("fifo.log");
    rustix::fs::mkfifoat(CWD, &fifo, Mode::from_raw_mode(0o600)).unwrap();
    assert!(open_append(&fifo).unwrap_err().to_string().contains("FIFO"));
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");

    let log = out.join("ok.log");
    open_append(&log).unwrap().write_all(b"a\n").unwrap();
    open_append(&log).unwrap().write_all(b"b\n").unwrap();
    assert_eq!(std::fs::read(&log).unwrap(), b"a\nb\n");
    assert!(matches!(
        create_new(&log, 0o600).unwrap_err(),
        Error::Exists(_)
    ));
}

#[test]
fn a_path_without_a_file_name_is_refused() {
    let (_d, out, _) = setup();
    let mut s = out.clone().into_os_string();
    s.push("/");
    assert!(matches!(
        write_atomic(Path::new(&s), b"x", true).unwrap_err(),
        Error::NoFileName(_)
    ));
}

#[test]
fn a_killed_runs_temporary_is_removed_by_the_next_writer_of_that_output() {
    let (_d, out, victim) = setup();
    let stale = out.join(".disk.qcow2.v2k-00112233aabbccdd");
    std::fs::write(&stale, b"half of a killed run").unwrap();
    let linked = out.join(".disk.qcow2.v2k-0011223344556677");
    symlink(&victim, &linked).unwrap();
    let other = out.join(".other.qcow2.v2k-00112233aabbccdd");
    std::fs::write(&other, b"not ours").unwrap();
    OutFile::create(&out.join("disk.qcow2"), false)
        .unwrap()
        .commit()
        .unwrap();
    assert!(!stale.exists());
    assert!(std::fs::symlink_metadata(&linked).is_err());
    assert!(other.exists());
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
}

#[test]
fn a_link_planted_where_a_directory_is_made_is_refused() {
    let (d, out, _) = setup();
    let elsewhere = d.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    symlink(&elsewhere, out.join("staging")).unwrap();
    let e = create_dir(&out.join("staging")).unwrap_err();
    assert!(e.to_string().contains("symbolic link"), "{e}");
    create_dir(&out.join("fresh")).unwrap();
    create_dir(&out.join("fresh")).unwrap();
    assert!(out.join("fresh").is_dir());
    std::fs::write(out.join("file"), b"").unwrap();
    assert!(create_dir(&out.join("file")).is_err());
}
