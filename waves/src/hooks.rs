//! Pre- and post-migration hooks: a command (argv, no shell) run with the VM's facts
//! in its environment, in its own process group, killed as a group when its
//! wall-clock limit passes, its stdout and stderr captured into one log file whose
//! tail goes into the journal and the wave report.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::plan::Hook;
use crate::{io, Result};

/// How much of a hook's output the journal and report keep (the log file has all).
pub const OUTPUT_TAIL_BYTES: u64 = 4096;
/// How often a running hook is polled; short against any useful hook, long enough to
/// cost nothing.
const POLL: Duration = Duration::from_millis(50);

/// What a hook did.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct HookResult {
    pub hook: String,
    pub command: Vec<String>,
    /// `None` when it was killed (time limit) or could not start.
    pub exit_code: Option<i32>,
    pub timed_out: bool,
    pub seconds: f64,
    /// The last [`OUTPUT_TAIL_BYTES`] of stdout and stderr, interleaved.
    pub output: String,
    pub log: PathBuf,
}

impl HookResult {
    pub fn ok(&self) -> bool {
        self.exit_code == Some(0) && !self.timed_out
    }

    /// Why it failed, in one line.
    pub fn reason(&self) -> String {
        if self.timed_out {
            format!("{} hook timed out", self.hook)
        } else {
            match self.exit_code {
                Some(c) => format!("{} hook exited with status {c}", self.hook),
                None => format!(
                    "{} hook did not start or was killed: {}",
                    self.hook,
                    self.output.trim()
                ),
            }
        }
    }
}

/// Where a hook's program is: a path as given (relative to the plan's directory), or a
/// bare name looked up in `PATH`. `None` when it is not an executable file.
pub fn resolve_program(program: &str, base: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        let p = if Path::new(program).is_absolute() {
            PathBuf::from(program)
        } else {
            base.join(program)
        };
        return executable(&p).then_some(p);
    }
    std::env::var_os("PATH")
        .map(|path| {
            std::env::split_paths(&path)
                .map(|d| d.join(program))
                .find(|p| executable(p))
        })
        .unwrap_or(None)
}

/// Runs `hook` with `env`, logging to `log`; never longer than its time limit.
pub fn run(
    which: &str,
    hook: &Hook,
    base: &Path,
    env: &[(&str, String)],
    log: &Path,
) -> Result<HookResult> {
    let start = Instant::now();
    if let Some(d) = log.parent() {
        std::fs::create_dir_all(d).map_err(io(format!("creating {}", d.display())))?;
    }
    // The log is written under a fresh temporary name and appears once the hook has
    // ended: a link or FIFO planted under its name is never written through.
    let log_file = v2k_outfile::OutFile::staged(log, b"", true)?;
    let out = log_file
        .file()
        .try_clone()
        .map_err(io("duplicating the hook log"))?;
    let err = out.try_clone().map_err(io("duplicating the hook log"))?;
    let program =
        resolve_program(&hook.command[0], base).unwrap_or_else(|| PathBuf::from(&hook.command[0]));
    let mut cmd = Command::new(&program);
    cmd.args(&hook.command[1..])
        .current_dir(base)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    for (k, v) in env {
        cmd.env(k, v);
    }
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut result = HookResult {
        hook: which.into(),
        command: hook.command.clone(),
        exit_code: None,
        timed_out: false,
        seconds: 0.0,
        output: String::new(),
        log: log.to_path_buf(),
    };
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            result.output = format!("{}: {e}", program.display());
            result.seconds = start.elapsed().as_secs_f64();
            let _ = writeln!(log_file.file(), "{}", result.output);
            log_file.commit()?;
            return Ok(result);
        }
    };
    let limit = Duration::from_secs(hook.timeout_s);
    loop {
        match child.try_wait().map_err(io("waiting for a hook"))? {
            Some(st) => {
                result.exit_code = st.code();
                break;
            }
            None if start.elapsed() >= limit => {
                // The whole group: a shell script's children must not outlive it.
                if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
                    let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
                }
                let _ = child.kill();
                let _ = child.wait();
                result.timed_out = true;
                break;
            }
            None => std::thread::sleep(POLL),
        }
    }
    result.seconds = start.elapsed().as_secs_f64();
    result.output = tail(log_file.file(), OUTPUT_TAIL_BYTES);
    log_file.commit()?;
    Ok(result)
}

/// The last `n` bytes of a file as text.
fn tail(mut f: &std::fs::File, n: u64) -> String {
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(n)));
    let mut b = Vec::new();
    let _ = f.read_to_end(&mut b);
    String::from_utf8_lossy(&b).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(cmd: &[&str], timeout_s: u64) -> Hook {
        Hook {
            command: cmd.iter().map(|s| s.to_string()).collect(),
            timeout_s,
        }
    }

    #[test]
    fn passes_the_environment_and_captures_output() {
        let d = tempfile::tempdir().unwrap();
        let h = hook(
            &["sh", "-c", "echo vm=$V2K_VM_NAME; echo oops >&2; exit 3"],
            10,
        );
        let r = run(
            "pre",
            &h,
            d.path(),
            &[("V2K_VM_NAME", "web".into())],
            &d.path().join("pre.log"),
        )
        .unwrap();
        assert_eq!(r.exit_code, Some(3));
        assert!(!r.ok());
        assert!(
            r.output.contains("vm=web") && r.output.contains("oops"),
            "{r:?}"
        );
        assert_eq!(r.reason(), "pre hook exited with status 3");
    }

    #[test]
    fn kills_a_hook_and_its_children_at_the_time_limit() {
        let d = tempfile::tempdir().unwrap();
        let h = hook(&["sh", "-c", "sleep 30 & sleep 30"], 1);
        let t = Instant::now();
        let r = run("post", &h, d.path(), &[], &d.path().join("post.log")).unwrap();
        assert!(r.timed_out, "{r:?}");
        assert!(t.elapsed() < Duration::from_secs(5));
        assert_eq!(r.reason(), "post hook timed out");
    }

    #[test]
    fn a_missing_program_is_a_failed_hook_not_a_panic() {
        let d = tempfile::tempdir().unwrap();
        let r = run(
            "pre",
            &hook(&["/nonexistent/x"], 5),
            d.path(),
            &[],
            &d.path().join("l"),
        )
        .unwrap();
        assert_eq!(r.exit_code, None);
        assert!(!r.ok());
    }

    #[test]
    fn a_link_planted_at_the_log_name_is_refused_and_the_victim_untouched() {
        let d = tempfile::tempdir().unwrap();
        let victim = d.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let log = d.path().join("pre.log");
        std::os::unix::fs::symlink(&victim, &log).unwrap();
        let e = run("pre", &hook(&["echo", "pwned"], 5), d.path(), &[], &log).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        // A regular log from an earlier attempt is replaced by this attempt's.
        std::fs::remove_file(&log).unwrap();
        std::fs::write(&log, "old attempt").unwrap();
        let r = run("pre", &hook(&["echo", "new"], 5), d.path(), &[], &log).unwrap();
        assert!(r.ok());
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "new\n");
    }

    #[test]
    fn resolves_programs_in_path_and_refuses_non_executables() {
        assert!(resolve_program("sh", Path::new("/")).is_some());
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("x.sh"), "echo").unwrap();
        assert!(resolve_program("./x.sh", d.path()).is_none());
    }
}
