//! The `v2k` binary: thin subcommands over the pipeline libraries.
//!
//! Each subcommand lives in `commands/<name>.rs` with its clap arguments and an `exec`
//! that builds an options struct and calls a library. Exit codes are documented in
//! `docs/cli.md` and defined once in [`exit`].

mod commands;
mod console;
mod exit;

use clap::{Parser, Subcommand};

/// Move VMware virtual machines to KVM and prove they work
#[derive(Parser)]
#[command(name = "v2k", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Baseline(commands::baseline::Args),
    Convert(commands::convert::Args),
    Info(commands::info::Args),
    Inspect(commands::inspect::Args),
    // Boxed: the largest argument set by far (clippy::large_enum_variant).
    Migrate(Box<commands::migrate::Args>),
    Rollback(commands::rollback::Args),
    Inject(commands::inject::Args),
    Wave(commands::wave::Args),
    Vsphere(commands::vsphere::Args),
}

fn main() {
    // Before any thread or child exists: children must never inherit the password.
    v2k_vsphere::address::take_password_from_env();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // clap prints help/version to stdout with exit 0, usage errors to stderr.
            let code = if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    let result = match cli.command {
        Command::Baseline(args) => commands::baseline::exec(args),
        Command::Convert(args) => commands::convert::exec(args),
        Command::Info(args) => commands::info::exec(args),
        Command::Inspect(args) => commands::inspect::exec(args),
        Command::Migrate(args) => commands::migrate::exec(*args),
        Command::Rollback(args) => commands::rollback::exec(args),
        Command::Inject(args) => commands::inject::exec(args),
        Command::Wave(args) => commands::wave::exec(args),
        Command::Vsphere(args) => commands::vsphere::exec(args),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(err) => {
            if console::is_broken_pipe(&err) {
                std::process::exit(exit::OK);
            }
            console::say!("v2k: error: {err:#}");
            std::process::exit(exit::ERROR);
        }
    }
}
