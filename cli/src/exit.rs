//! The documented exit codes of `v2k` (see docs/cli.md), defined once.

/// Everything asked for was done and verified.
pub const OK: i32 = 0;
/// The command ran but found a problem it reports (for `inspect`: a critical
/// pre-flight concern; for batch commands: some items failed).
pub const FINDINGS: i32 = 1;
/// A fatal error: bad input, I/O failure, verification mismatch.
pub const ERROR: i32 = 2;
/// The command line itself was wrong (same code as a fatal error, as clap uses).
pub const USAGE: i32 = 2;
/// `wave run`: the plan's gate held a wave larger than the one before it (the
/// waves before it ran; docs/waves.md, "The gate").
pub const HELD: i32 = 3;
