//! The one way v2k creates files. Output and run directories may hold files planted
//! by someone else (a symlink to `/etc/shadow` under the name v2k is about to use, a
//! FIFO, a hard link to a victim), and a conversion host usually runs as root, so no
//! file is ever opened by a name v2k did not just create itself:
//!
//! ```text
//!  open DIR once (O_DIRECTORY) ─▶ openat(DIR, ".NAME.v2k-<random>", O_CREAT|O_EXCL|O_NOFOLLOW)
//!       ─▶ write by descriptor ─▶ fsync ─▶ check NAME (absent, or a regular file with overwrite)
//!       ─▶ renameat(DIR, tmp, DIR, NAME) (RENAME_NOREPLACE without overwrite) ─▶ fsync DIR
//! ```
//!
//! What is guaranteed:
//! - v2k never writes through a link and never truncates or writes into a file it did
//!   not create (the one exception is a block device given explicitly as a raw output,
//!   [`OutFile::create_allowing_device`], which is written *into*, never replaced).
//! - Under the final name there is either what was there before or the complete,
//!   fsync'd new file; a run killed at any moment leaves at worst a hidden
//!   `.NAME.v2k-*` temporary file, never a partial file under `NAME`. A dropped
//!   [`OutFile`] removes its temporary file.
//! - With overwrite, only a regular file is replaced: a symlink, directory, FIFO,
//!   socket or device under the final name is refused (never followed).
//! - Without overwrite the rename itself refuses an existing name (`RENAME_NOREPLACE`),
//!   so a file that appears meanwhile is not replaced either.
//! - Two v2k processes writing the same large output ([`OutFile::create`]) do not both
//!   run: each holds an exclusive `flock` on `.NAME.v2k-lock` (created with
//!   `O_NOFOLLOW`, never written, removed when done) and the second is refused with
//!   [`Error::Busy`]. Small files ([`write_atomic`]) take no lock: each writer has its
//!   own temporary file, so the last complete one wins and none is ever interleaved.
//! - Several files that belong together (a disk and its manifest) can be committed as
//!   one group ([`commit_all`]): nothing is renamed before all are fsync'd, and a failed
//!   rename removes the names already renamed by this group.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, FlockOperation, Mode, OFlags, RenameFlags};
use rustix::io::Errno;

/// Attempts at a fresh temporary name before giving up: a collision of 64 random bits
/// only happens when someone plants names on purpose, and each planted name costs them
/// one guess out of 2^64.
const TMP_ATTEMPTS: usize = 8;
/// Attempts at taking the lock file when it is removed between our open and our lock
/// (its previous holder finished meanwhile).
const LOCK_ATTEMPTS: usize = 8;
/// Mode of a file created without an explicit one (the umask still applies), as
/// `File::create` does.
const DEFAULT_MODE: u32 = 0o666;

/// What went wrong, with the path it concerns.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The path ends in `..`, `/` or nothing.
    #[error("{}: output path names no file", .0.display())]
    NoFileName(PathBuf),
    /// The final name exists and overwrite was not asked for.
    #[error("{}: output exists (use --force to replace it)", .0.display())]
    Exists(PathBuf),
    /// Another process holds the lock of this output.
    #[error("{}: another v2k process is writing this output", .0.display())]
    Busy(PathBuf),
    /// Something other than a regular file is where v2k would write.
    #[error("{}: is a {kind}; v2k only replaces regular files", path.display())]
    NotRegular { path: PathBuf, kind: &'static str },
    /// The operating system refused a step.
    #[error("{}: {what}", path.display())]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    fn io(path: &Path, what: &'static str, e: impl Into<std::io::Error>) -> Self {
        Error::Io {
            path: path.to_path_buf(),
            what,
            source: e.into(),
        }
    }

    /// Whether the caller asked for something this helper refuses on purpose (as
    /// opposed to the system failing): exists, busy, not a regular file, no name.
    pub fn is_refusal(&self) -> bool {
        !matches!(self, Error::Io { .. })
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// The name of a file type, for messages.
fn kind_name(t: FileType) -> &'static str {
    match t {
        FileType::RegularFile => "regular file",
        FileType::Directory => "directory",
        FileType::Symlink => "symbolic link",
        FileType::Fifo => "FIFO",
        FileType::Socket => "socket",
        FileType::CharacterDevice => "character device",
        FileType::BlockDevice => "block device",
        FileType::Unknown => "file of unknown type",
    }
}

/// A directory opened once, and the last component of a path inside it.
struct Place {
    dir: OwnedFd,
    name: OsString,
    path: PathBuf,
}

impl Place {
    /// Opens the parent of `path` (symlinks in the directory part are the user's own
    /// choice and are followed once, here; everything after works by descriptor).
    fn open(path: &Path) -> Result<Place> {
        let name = match path.file_name() {
            Some(n) if !path.as_os_str().as_bytes().ends_with(b"/") => n.to_os_string(),
            _ => return Err(Error::NoFileName(path.to_path_buf())),
        };
        let parent = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let dir = rustix::fs::open(
            parent,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| Error::io(parent, "opening the output directory", e))?;
        Ok(Place {
            dir,
            name,
            path: path.to_path_buf(),
        })
    }

    /// The type and identity of `name` in the directory, without following a link.
    fn stat(&self, name: &OsStr) -> Result<Option<rustix::fs::Stat>> {
        match rustix::fs::statat(&self.dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(st)),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(Error::io(&self.path, "checking the output name", e)),
        }
    }

    /// Refuses the final name when it exists without `overwrite`, or is not a regular
    /// file.
    fn check_final(&self, overwrite: bool) -> Result<()> {
        let Some(st) = self.stat(&self.name)? else {
            return Ok(());
        };
        let t = FileType::from_raw_mode(st.st_mode);
        if t != FileType::RegularFile {
            return Err(Error::NotRegular {
                path: self.path.clone(),
                kind: kind_name(t),
            });
        }
        if !overwrite {
            return Err(Error::Exists(self.path.clone()));
        }
        Ok(())
    }

    fn sync(&self) -> Result<()> {
        rustix::fs::fsync(&self.dir).map_err(|e| {
            Error::io(
                self.path.parent().unwrap_or(Path::new(".")),
                "syncing the directory",
                e,
            )
        })
    }
}

/// A fresh unpredictable hidden name for `name`: `.NAME.v2k-<16 hex digits>`.
fn tmp_name(name: &OsStr) -> Result<OsString> {
    let mut r = [0u8; 8];
    let mut filled = 0;
    while filled < r.len() {
        match rustix::rand::getrandom(&mut r[filled..], rustix::rand::GetRandomFlags::empty()) {
            Ok(n) => filled += n,
            Err(Errno::INTR) => {}
            Err(e) => {
                return Err(Error::io(
                    Path::new(name),
                    "drawing a random temporary name",
                    e,
                ))
            }
        }
    }
    let mut s = OsString::from(".");
    s.push(name);
    s.push(".v2k-");
    for b in r {
        s.push(format!("{b:02x}"));
    }
    Ok(s)
}

/// Creates `name` in the directory, only if nothing at all is there (`O_EXCL`), and
/// not through a link (`O_NOFOLLOW`, which `O_EXCL` implies for the last component on
/// Linux; stated for clarity).
fn open_tmp(place: &Place, name: &OsStr) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat(
        &place.dir,
        name,
        OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(DEFAULT_MODE),
    )
}

/// Removes the temporary files a killed run left for this output (`.NAME.v2k-` and 16
/// hex digits). Called with the output's lock held: only a holder of that lock creates
/// such names, so every one found is stale. (A big output's name is never also written
/// by the unlocked [`write_atomic`].) Best effort: what cannot be removed stays hidden.
fn remove_stale(place: &Place) {
    let mut prefix = b".".to_vec();
    prefix.extend_from_slice(place.name.as_bytes());
    prefix.extend_from_slice(b".v2k-");
    let Ok(dir) = rustix::fs::Dir::read_from(&place.dir) else {
        return;
    };
    for entry in dir.flatten() {
        let n = entry.file_name().to_bytes();
        let Some(rest) = n.strip_prefix(prefix.as_slice()) else {
            continue;
        };
        if rest.len() == 16 && rest.iter().all(|b| b.is_ascii_hexdigit()) {
            // unlinkat removes the name itself, never what a link points to.
            let _ = rustix::fs::unlinkat(&place.dir, entry.file_name(), AtFlags::empty());
        }
    }
}

/// The exclusive lock of one output: `.NAME.v2k-lock`, held by `flock`, removed on drop.
struct Lock {
    fd: OwnedFd,
    name: OsString,
}

impl Lock {
    fn take(place: &Place) -> Result<Lock> {
        let mut name = OsString::from(".");
        name.push(&place.name);
        name.push(".v2k-lock");
        for _ in 0..LOCK_ATTEMPTS {
            // No O_EXCL: a lock file left by a killed run is reused. O_NOFOLLOW and the
            // type check below keep this from opening anything but a regular file, and
            // it is never written or truncated, so a planted hard link gains nothing.
            // O_NONBLOCK: a planted FIFO must not hang the open.
            let fd = rustix::fs::openat(
                &place.dir,
                &name,
                OFlags::RDONLY
                    | OFlags::CREATE
                    | OFlags::NOFOLLOW
                    | OFlags::CLOEXEC
                    | OFlags::NONBLOCK,
                Mode::from_raw_mode(0o600),
            )
            .map_err(|e| match e {
                Errno::LOOP => Error::NotRegular {
                    path: place.path.with_file_name(&name),
                    kind: "symbolic link",
                },
                e => Error::io(&place.path, "creating the lock file", e),
            })?;
            let st = rustix::fs::fstat(&fd)
                .map_err(|e| Error::io(&place.path, "checking the lock file", e))?;
            let t = FileType::from_raw_mode(st.st_mode);
            if t != FileType::RegularFile {
                return Err(Error::NotRegular {
                    path: place.path.with_file_name(&name),
                    kind: kind_name(t),
                });
            }
            match rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => {}
                Err(Errno::WOULDBLOCK) => return Err(Error::Busy(place.path.clone())),
                Err(e) => return Err(Error::io(&place.path, "locking the output", e)),
            }
            // The previous holder may have removed the file between our open and our
            // lock: then we hold a lock on a name nobody else can find; start again.
            match place.stat(&name)? {
                Some(now) if now.st_dev == st.st_dev && now.st_ino == st.st_ino => {
                    return Ok(Lock { fd, name });
                }
                _ => continue,
            }
        }
        Err(Error::Busy(place.path.clone()))
    }

    /// Removes the lock file while still holding the lock (so that a waiter re-checks).
    fn release(self, place: &Place) {
        let _ = rustix::fs::unlinkat(&place.dir, &self.name, AtFlags::empty());
        drop(self.fd);
    }
}

/// A file being written under a temporary name (or, for a block device output, the
/// device itself). Nothing appears under the final name before [`OutFile::commit`]
/// (or [`commit_all`]); dropping it removes the temporary file.
pub struct OutFile {
    place: Place,
    /// `None` once committed (or for a device, which has no temporary name).
    tmp: Option<OsString>,
    tmp_path: PathBuf,
    file: File,
    overwrite: bool,
    lock: Option<Lock>,
    device: bool,
}

impl OutFile {
    /// Starts writing `final_path` (a big output): refuses when it exists without
    /// `overwrite` or is not a regular file, and when another process is writing it.
    pub fn create(final_path: &Path, overwrite: bool) -> Result<OutFile> {
        let place = Place::open(final_path)?;
        place.check_final(overwrite)?;
        let lock = Lock::take(&place)?;
        remove_stale(&place);
        match Self::with_tmp(place, overwrite) {
            Ok(mut f) => {
                f.lock = Some(lock);
                Ok(f)
            }
            Err((place, e)) => {
                lock.release(&place);
                Err(e)
            }
        }
    }

    /// Like [`OutFile::create`], but a block device under `final_path` (directly or
    /// through a link owned by root or by us, as `/dev/vg/lv` is) is opened to be
    /// written *into*: it needs `overwrite` as consent, is opened with `O_EXCL` (the
    /// kernel refuses a device that is mounted or held by another exclusive opener),
    /// never truncated, and nothing is renamed. The caller must write every byte of
    /// the range it claims (a device may hold old data: there are no holes).
    pub fn create_allowing_device(final_path: &Path, overwrite: bool) -> Result<OutFile> {
        let place = Place::open(final_path)?;
        let Some(lst) = place.stat(&place.name)? else {
            return Self::create(final_path, overwrite);
        };
        let mut t = FileType::from_raw_mode(lst.st_mode);
        if t == FileType::Symlink {
            // Follow a link only when someone we trust made it: root (udev's /dev links)
            // or ourselves. A link planted by another user is refused below.
            let me = rustix::process::geteuid().as_raw();
            if lst.st_uid == 0 || lst.st_uid == me {
                if let Ok(st) = rustix::fs::statat(&place.dir, &place.name, AtFlags::empty()) {
                    if FileType::from_raw_mode(st.st_mode) == FileType::BlockDevice {
                        t = FileType::BlockDevice;
                    }
                }
            }
        }
        if t != FileType::BlockDevice {
            return Self::create(final_path, overwrite);
        }
        if !overwrite {
            return Err(Error::Exists(final_path.to_path_buf()));
        }
        // No O_CREAT, no O_TRUNC: the node exists and its content is replaced in place.
        let fd = rustix::fs::openat(
            &place.dir,
            &place.name,
            OFlags::RDWR | OFlags::EXCL | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| match e {
            Errno::BUSY => Error::Busy(final_path.to_path_buf()),
            e => Error::io(final_path, "opening the output device", e),
        })?;
        let st = rustix::fs::fstat(&fd)
            .map_err(|e| Error::io(final_path, "checking the output device", e))?;
        let t = FileType::from_raw_mode(st.st_mode);
        if t != FileType::BlockDevice {
            return Err(Error::NotRegular {
                path: final_path.to_path_buf(),
                kind: kind_name(t),
            });
        }
        Ok(OutFile {
            tmp_path: final_path.to_path_buf(),
            place,
            tmp: None,
            file: File::from(fd),
            overwrite,
            lock: None,
            device: true,
        })
    }

    /// A small file staged for [`commit_all`] (no lock): `bytes` written and synced.
    pub fn staged(final_path: &Path, bytes: &[u8], overwrite: bool) -> Result<OutFile> {
        let place = Place::open(final_path)?;
        place.check_final(overwrite)?;
        let f = Self::with_tmp(place, overwrite).map_err(|(_, e)| e)?;
        (&f.file)
            .write_all(bytes)
            .map_err(|e| Error::io(&f.tmp_path, "writing", e))?;
        Ok(f)
    }

    /// Creates the temporary file: a fresh random name, `O_EXCL | O_NOFOLLOW`, so that
    /// nothing planted under any name can be opened.
    fn with_tmp(place: Place, overwrite: bool) -> std::result::Result<OutFile, (Place, Error)> {
        for _ in 0..TMP_ATTEMPTS {
            let name = match tmp_name(&place.name) {
                Ok(n) => n,
                Err(e) => return Err((place, e)),
            };
            match open_tmp(&place, &name) {
                Ok(fd) => {
                    let tmp_path = place.path.with_file_name(&name);
                    return Ok(OutFile {
                        place,
                        tmp: Some(name),
                        tmp_path,
                        file: File::from(fd),
                        overwrite,
                        lock: None,
                        device: false,
                    });
                }
                Err(Errno::EXIST) => continue,
                Err(e) => {
                    let err = Error::io(&place.path, "creating the temporary output", e);
                    return Err((place, err));
                }
            }
        }
        let err = Error::io(
            &place.path,
            "creating the temporary output",
            std::io::Error::from(std::io::ErrorKind::AlreadyExists),
        );
        Err((place, err))
    }

    /// The open file, to write to (by descriptor: `write_all_at`, `set_len`...).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The temporary file's path, for messages only: never reopen it by this name.
    pub fn tmp_path(&self) -> &Path {
        &self.tmp_path
    }

    /// A path that reopens exactly this file (`/proc/self/fd/N`), for readers that
    /// need their own descriptors (read-back verification), immune to renames.
    pub fn reopen_path(&self) -> PathBuf {
        use std::os::fd::AsRawFd;
        PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
    }

    pub fn final_path(&self) -> &Path {
        &self.place.path
    }

    /// Whether this writes into an existing block device (no temporary name).
    pub fn is_device(&self) -> bool {
        self.device
    }

    /// Sets the permission bits of the file to be (exactly `mode`, umask aside).
    pub(crate) fn set_mode(&self, mode: u32) -> Result<()> {
        rustix::fs::fchmod(&self.file, Mode::from_raw_mode(mode))
            .map_err(|e| Error::io(&self.tmp_path, "setting the mode of", e))
    }

    /// fsync, rename onto the final name, fsync of the directory.
    pub fn commit(self) -> Result<()> {
        commit_all(vec![self])
    }

    /// Renames the (synced) temporary file `tmp` onto the final name, after checking
    /// that `tmp` is still our file and that the final name may be replaced.
    fn rename(&self, tmp: &OsStr) -> Result<()> {
        let p = &self.place;
        // The temporary name must still be our file: someone with write access to the
        // directory could have swapped it for a link since.
        let ours =
            rustix::fs::fstat(&self.file).map_err(|e| Error::io(&self.tmp_path, "checking", e))?;
        match p.stat(tmp)? {
            Some(st) if st.st_dev == ours.st_dev && st.st_ino == ours.st_ino => {}
            _ => {
                return Err(Error::io(
                    &self.tmp_path,
                    "the temporary output was replaced by someone else",
                    std::io::Error::from(std::io::ErrorKind::NotFound),
                ))
            }
        }
        p.check_final(self.overwrite)?;
        let flags = if self.overwrite {
            RenameFlags::empty()
        } else {
            RenameFlags::NOREPLACE
        };
        match rustix::fs::renameat_with(&p.dir, tmp, &p.dir, &p.name, flags) {
            Ok(()) => Ok(()),
            Err(Errno::EXIST) => Err(Error::Exists(p.path.clone())),
            // A filesystem without RENAME_NOREPLACE: the check above is what we have.
            Err(Errno::INVAL) if !self.overwrite => {
                rustix::fs::renameat(&p.dir, tmp, &p.dir, &p.name)
                    .map_err(|e| Error::io(&p.path, "renaming the finished output into place", e))
            }
            Err(Errno::ISDIR) => Err(Error::NotRegular {
                path: p.path.clone(),
                kind: "directory",
            }),
            Err(e) => Err(Error::io(
                &p.path,
                "renaming the finished output into place",
                e,
            )),
        }
    }
}

impl Drop for OutFile {
    fn drop(&mut self) {
        if let Some(tmp) = self.tmp.take() {
            let _ = rustix::fs::unlinkat(&self.place.dir, &tmp, AtFlags::empty());
        }
        if let Some(lock) = self.lock.take() {
            lock.release(&self.place);
        }
    }
}

/// Commits files that belong together: every one is fsync'd first, then they are
/// renamed in the order given (put the file whose presence means "done", such as a
/// disk, last), then their directories are fsync'd. If a rename fails, the files this
/// call already renamed are removed again, so that none of the group is left visible.
pub fn commit_all(mut files: Vec<OutFile>) -> Result<()> {
    for f in &files {
        f.file
            .sync_all()
            .map_err(|e| Error::io(&f.tmp_path, "syncing the output", e))?;
    }
    for i in 0..files.len() {
        let Some(tmp) = files[i].tmp.clone() else {
            continue; // a device: written in place
        };
        if let Err(e) = files[i].rename(&tmp) {
            for done in &files[..i] {
                if !done.device {
                    let _ =
                        rustix::fs::unlinkat(&done.place.dir, &done.place.name, AtFlags::empty());
                }
            }
            return Err(e);
        }
        files[i].tmp = None;
    }
    for f in &files {
        if !f.device {
            f.place.sync()?;
        }
    }
    Ok(())
}

/// Writes a small file (manifest, `vm.json`, a script...) by the whole procedure:
/// fresh temporary name, fsync, rename, directory fsync.
pub fn write_atomic(path: &Path, bytes: &[u8], overwrite: bool) -> Result<()> {
    OutFile::staged(path, bytes, overwrite)?.commit()
}

/// [`write_atomic`] with explicit permission bits (0o755 for a script).
pub fn write_atomic_mode(path: &Path, bytes: &[u8], overwrite: bool, mode: u32) -> Result<()> {
    let f = OutFile::staged(path, bytes, overwrite)?;
    f.set_mode(mode)?;
    f.commit()
}

/// Makes sure `path` is a real directory v2k may write into: created if missing (its
/// parent must exist), and refused when its last component is a link, a file or anything
/// but a directory. For directories v2k names itself inside an output or run directory
/// (staging areas), where a planted link would send every file elsewhere. (Files are
/// then created by path, so someone able to rename entries in the parent between this
/// check and those writes could still swap it; the files themselves stay protected.)
pub fn create_dir(path: &Path) -> Result<()> {
    let place = Place::open(path)?;
    match rustix::fs::mkdirat(&place.dir, &place.name, Mode::from_raw_mode(0o777)) {
        Ok(()) | Err(Errno::EXIST) => {}
        Err(e) => return Err(Error::io(path, "creating the directory", e)),
    }
    match place.stat(&place.name)? {
        Some(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => Ok(()),
        Some(st) => Err(Error::NotRegular {
            path: path.to_path_buf(),
            kind: kind_name(FileType::from_raw_mode(st.st_mode)),
        }),
        None => Err(Error::io(
            path,
            "creating the directory",
            std::io::Error::from(std::io::ErrorKind::NotFound),
        )),
    }
}

/// Opens a log for appending, creating it if needed: never through a link
/// (`O_NOFOLLOW`), never a FIFO or device, never a file with other hard links (it
/// would be someone else's file). For a fresh log, prefer [`create_new`].
pub fn open_append(path: &Path) -> Result<File> {
    open_checked(path, OFlags::APPEND, DEFAULT_MODE)
}

/// Creates a new file that must not exist (a private host temporary, a per-run log):
/// `O_EXCL | O_NOFOLLOW`, created with `mode` (the umask still applies).
pub fn create_new(path: &Path, mode: u32) -> Result<File> {
    open_checked(path, OFlags::EXCL, mode)
}

fn open_checked(path: &Path, extra: OFlags, mode: u32) -> Result<File> {
    let place = Place::open(path)?;
    // Named up front for a clear message (opening a FIFO or socket for writing fails
    // with a bare ENXIO); the check after the open is the one that holds.
    if let Some(st) = place.stat(&place.name)? {
        let t = FileType::from_raw_mode(st.st_mode);
        if t != FileType::RegularFile {
            return Err(Error::NotRegular {
                path: path.to_path_buf(),
                kind: kind_name(t),
            });
        }
    }
    let fd = rustix::fs::openat(
        &place.dir,
        &place.name,
        OFlags::WRONLY
            | OFlags::CREATE
            | OFlags::NOFOLLOW
            | OFlags::CLOEXEC
            | OFlags::NONBLOCK
            | extra,
        Mode::from_raw_mode(mode),
    )
    .map_err(|e| match e {
        Errno::LOOP => Error::NotRegular {
            path: path.to_path_buf(),
            kind: "symbolic link",
        },
        Errno::EXIST => Error::Exists(path.to_path_buf()),
        e => Error::io(path, "opening", e),
    })?;
    let st = rustix::fs::fstat(&fd).map_err(|e| Error::io(path, "checking", e))?;
    let t = FileType::from_raw_mode(st.st_mode);
    if t != FileType::RegularFile {
        return Err(Error::NotRegular {
            path: path.to_path_buf(),
            kind: kind_name(t),
        });
    }
    if st.st_nlink > 1 {
        return Err(Error::NotRegular {
            path: path.to_path_buf(),
            kind: "hard link to another file",
        });
    }
    // Regular files ignore O_NONBLOCK; clear it anyway so the descriptor is ordinary.
    rustix::fs::fcntl_setfl(
        &fd,
        rustix::fs::fcntl_getfl(&fd).unwrap_or(OFlags::empty()) & !OFlags::NONBLOCK,
    )
    .map_err(|e| Error::io(path, "opening", e))?;
    Ok(File::from(fd))
}

#[cfg(test)]
mod tests;
