//! Migration waves: a YAML plan of VMs grouped in ordered waves ([`plan`]), checked
//! before anything runs ([`check`]), run in parallel within limits through the one-VM
//! pipeline of `v2k-migrate` ([`runner`]) with a crash-safe journal ([`journal`]) and
//! time-limited hooks ([`hooks`]), and summed up per wave in HTML, JSON and JUnit
//! ([`report`]) with each wave's change-failure rate and MTTR ([`metrics`]). docs/waves.md describes the plan, the journal and the reports.

pub mod assign;
pub mod check;
pub mod expand;
pub mod gate;
mod hooks;
pub mod journal;
pub mod metrics;
pub mod plan;
mod prescan;
pub mod report;
pub mod rollback;
mod runner;
pub mod window;

pub use check::{check, CheckReport};
pub use expand::expand;
pub use plan::Plan;
pub use runner::{run, run_with, RunEvent, RunOptions, RunSummary};

/// Exit status: every VM migrated (and validated where asked).
pub const EXIT_OK: i32 = 0;
/// Exit status: some VMs failed or were not run.
pub const EXIT_FAILED: i32 = 1;
/// Exit status: a plan error or a fatal error.
pub const EXIT_ERROR: i32 = 2;
/// Exit status: the gate held a wave (the waves before it ran; see docs/waves.md).
pub const EXIT_HELD: i32 = 3;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The plan is wrong; nothing was run.
    #[error("{}", plan::format_problems(.0))]
    Plan(Vec<plan::Problem>),
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("journal {path}: {message}")]
    Journal { path: String, message: String },
    #[error("{0}")]
    Run(String),
    /// Creating a file in the run directory failed or was refused (a link or special
    /// file where v2k writes).
    #[error(transparent)]
    Output(#[from] v2k_outfile::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// Seconds since the Unix epoch, for journal records.
pub(crate) fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}
