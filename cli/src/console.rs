//! One place for what `v2k` prints: data to stdout, progress and logs to stderr,
//! JSON Lines when `--json` is given.

use std::io::Write;

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
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, value)?;
    out.write_all(b"\n")?;
    out.flush()
}

/// Whether stderr is a terminal (progress bars are drawn only there).
pub fn stderr_is_terminal() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal()
}
