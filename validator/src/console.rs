//! The serial console of a domain on any libvirt connection, read as `virsh console`
//! shows it: libvirt carries the console stream over its own connection, so this
//! works over `qemu+ssh://` with nothing shared with the destination host (unlike a
//! console log file, which lives on that host).
//!
//! virsh refuses a console without a terminal on its standard input, so it runs on
//! the slave side of a pseudo-terminal and v2k reads the master side. Nothing is
//! ever written to the console: the guest's login prompt is left alone.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustix::pty::{grantpt, openpt, ptsname, unlockpt, OpenptFlags};

use crate::{io, Error, Result};

/// The most console output kept (the agent's line comes within the first minutes of
/// a boot; a guest printing without end must not fill memory).
pub const MAX_CONSOLE_BYTES: usize = 16 << 20;

/// What virsh prints once the console stream is open.
const CONNECTED: &str = "Escape character is";

/// An attached `virsh console`; detached (virsh killed) on drop.
pub struct Console {
    child: Child,
    buf: Arc<Mutex<Vec<u8>>>,
    reader: Option<JoinHandle<()>>,
}

impl Console {
    /// Attaches to `name`'s console on `uri` and waits (up to `limit`) until virsh
    /// says the stream is open, so that nothing the guest prints afterwards is lost.
    pub fn attach(uri: &str, name: &str, limit: Duration) -> Result<Console> {
        let pty = |what: &str| {
            let what = format!("{what} (pseudo-terminal for virsh console)");
            move |e: rustix::io::Errno| Error::Io {
                what,
                source: e.into(),
            }
        };
        let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)
            .map_err(pty("openpt"))?;
        grantpt(&master).map_err(pty("grantpt"))?;
        unlockpt(&master).map_err(pty("unlockpt"))?;
        let slave_path = PathBuf::from(
            ptsname(&master, Vec::new())
                .map_err(pty("ptsname"))?
                .to_string_lossy()
                .into_owned(),
        );
        let slave = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc_o_noctty())
            .open(&slave_path)
            .map_err(io(format!("opening {}", slave_path.display())))?;
        let clone = |f: &File| f.try_clone().map_err(io("duplicating the terminal"));
        let child = Command::new("virsh")
            .args(["-c", uri, "console", "--force", name])
            .stdin(Stdio::from(clone(&slave)?))
            .stdout(Stdio::from(clone(&slave)?))
            .stderr(Stdio::from(slave))
            .spawn()
            .map_err(io("running virsh console"))?;
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&buf);
        let mut master = File::from(master);
        // Reads until virsh exits (the master then reads EIO).
        let reader = std::thread::spawn(move || {
            let mut chunk = [0u8; 8192];
            while let Ok(n) = master.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                let mut b = sink.lock().unwrap_or_else(|p| p.into_inner());
                let room = MAX_CONSOLE_BYTES.saturating_sub(b.len());
                b.extend_from_slice(&chunk[..n.min(room)]);
            }
        });
        let mut c = Console {
            child,
            buf,
            reader: Some(reader),
        };
        let start = Instant::now();
        loop {
            if c.text().contains(CONNECTED) {
                return Ok(c);
            }
            if let Ok(Some(st)) = c.child.try_wait() {
                return Err(Error::Tool(format!(
                    "virsh console {name} on {uri} ended ({st}): {}",
                    c.text().trim()
                )));
            }
            if start.elapsed() > limit {
                return Err(Error::Tool(format!(
                    "virsh console {name} on {uri} did not connect within {} s: {}",
                    limit.as_secs(),
                    c.text().trim()
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Everything read so far (lossy UTF-8).
    pub fn text(&self) -> String {
        let b = self.buf.lock().unwrap_or_else(|p| p.into_inner());
        String::from_utf8_lossy(&b).into_owned()
    }

    /// True while virsh still holds the console (it exits when the domain stops).
    pub fn attached(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

/// `O_NOCTTY`: the terminal must not become v2k's own controlling terminal.
fn libc_o_noctty() -> i32 {
    rustix::fs::OFlags::NOCTTY.bits() as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_console_of_no_domain_fails_with_virshs_words() {
        let name = format!("v2k-no-such-domain-{}", std::process::id());
        let e = Console::attach("test:///default", &name, Duration::from_secs(20))
            .err()
            .expect("no such domain");
        let msg = e.to_string();
        assert!(msg.contains(&name), "{msg}");
        assert!(msg.contains("ended"), "{msg}");
    }
}
