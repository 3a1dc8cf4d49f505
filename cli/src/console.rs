//! One place for what `v2k` prints: data to stdout, progress and logs to stderr,
//! JSON Lines when `--json` is given.
//!
//! Human output quotes text v2k does not control (VM, disk and network names, `ddb.*`
//! values, extent and parent paths, wave names, error messages that quote them). It is
//! escaped by `v2k_untrusted::term` on its way out: [`say!`] for stderr lines, [`Human`]
//! around stdout, so no ESC, BEL, CR, C1 control or bidi override reaches a terminal
//! raw. Single values are escaped where they are formatted too ([`escape`]), so that a
//! newline inside one cannot forge a line. JSON output is serde_json's, with the C1
//! controls and bidi overrides it leaves raw written as `\uXXXX` (the same value).

use std::io::Write;

pub use v2k_untrusted::term::{escape, escape_path};

/// `eprintln!` for a human line: the whole line goes out escaped (newlines v2k put in
/// it stay; values it quotes should be [`escape`]d when formatted).
macro_rules! say {
    ($($arg:tt)*) => {
        eprintln!("{}", v2k_untrusted::term::escape_lines(&format!($($arg)*)))
    };
}
pub(crate) use say;

/// A writer for human output on stdout that escapes whatever passes through it. Each
/// `write` gets whole `str` pieces from `writeln!`, so characters are never split.
pub struct Human<W: Write>(pub W);

impl<W: Write> Write for Human<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        self.0
            .write_all(v2k_untrusted::term::escape_lines(&text).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// Locked stdout for human output, escaped ([`Human`]).
pub fn human_stdout() -> Human<std::io::StdoutLock<'static>> {
    Human(std::io::stdout().lock())
}

/// Whether an error chain ends in a closed stdout pipe (`v2k info x | head`), which
/// ends the program quietly with status 0, as ripgrep does.
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Writes one JSON object as a line on stdout and flushes it, so that a consumer
/// reading the pipe sees each event as it happens.
pub fn emit_json(value: &serde_json::Value) -> std::io::Result<()> {
    let line = serde_json::to_string(value)?;
    let mut out = std::io::stdout().lock();
    // C1 controls and bidi overrides as \uXXXX: the same JSON, safe on a terminal.
    out.write_all(v2k_untrusted::term::json_safe(&line).as_bytes())?;
    out.write_all(b"\n")?;
    out.flush()
}

/// Whether stderr is a terminal (progress bars are drawn only there).
pub fn stderr_is_terminal() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal()
}
