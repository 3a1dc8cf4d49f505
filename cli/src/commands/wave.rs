//! `v2k wave check|run|status|report|assign|rollback`: batch migration waves from a YAML plan. The
//! plan, the runner, the journal and the reports live in the `v2k-waves` library
//! (docs/waves.md); this file maps arguments and prints: data and JSON Lines to
//! stdout, progress bars (on a terminal) and logs to stderr.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Mutex;

use anyhow::Context;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde_json::json;
use v2k_waves::{journal::VmStatus, plan, RunEvent, RunOptions};

use crate::{console, exit};

/// Run migration waves from a YAML plan
#[derive(clap::Args)]
#[command(
    long_about = "Run migration waves from a YAML plan (docs/waves.md).\n\n\
    Exit status: 0 every VM migrated (and validated where asked), 1 some VMs failed or \
    were not run, 2 plan error or fatal error, 3 (run) the plan's gate held a wave."
)]
pub struct Args {
    #[command(subcommand)]
    command: Sub,
}

#[derive(clap::Subcommand)]
enum Sub {
    /// Check a plan: schema, references, and each VM's pre-flight concerns
    Check {
        plan: PathBuf,
        /// One JSON object on stdout
        #[arg(long)]
        json: bool,
    },
    /// Run a plan, or resume its interrupted run
    Run {
        plan: PathBuf,
        /// Run only this wave
        #[arg(long)]
        wave: Option<String>,
        /// Check and show what would run, run nothing
        #[arg(long)]
        dry_run: bool,
        /// On resume, migrate again the VMs that failed
        #[arg(long)]
        retry_failed: bool,
        /// Start a wave the plan's gate holds; the reason and who gave it are journalled
        #[arg(long, value_name = "REASON")]
        override_gate: Option<String>,
        /// JSON Lines events on stdout (the default when stdout is not a terminal)
        #[arg(long)]
        json: bool,
    },
    /// Show the state of a run from its journal
    Status {
        run_dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Write the wave reports of a run again from its journal, or merge several hosts' runs
    Report {
        /// The run directory
        #[arg(required_unless_present = "merge", conflicts_with = "merge")]
        run_dir: Option<PathBuf>,
        /// Merge these run directories (one per conversion host) into one report per wave
        #[arg(long, num_args = 1.., value_name = "DIR")]
        merge: Vec<PathBuf>,
        /// Where the merged reports go (with --merge)
        #[arg(
            short,
            long,
            value_name = "DIR",
            requires = "merge",
            default_value = "merged-report"
        )]
        out: PathBuf,
    },
    /// Split a plan over conversion hosts: one shard plan per host and an assignment record
    Assign {
        plan: PathBuf,
        /// The conversion hosts: a file (one name a line, `#` comments) or NAME,NAME,...
        #[arg(long, value_name = "FILE|LIST")]
        hosts: String,
        /// A lost host: its shards are withdrawn, its unfinished VMs move to the others
        #[arg(long, value_name = "HOST")]
        exclude: Vec<String>,
        /// A run directory fetched from a host (its journal says which VMs finished)
        #[arg(long = "journal", value_name = "DIR")]
        journals: Vec<PathBuf>,
        /// The output directory (its assignment.json, when present, is reassigned)
        #[arg(short, long, value_name = "OUTDIR")]
        out: PathBuf,
        /// The assignment record as one JSON object on stdout
        #[arg(long)]
        json: bool,
    },
    /// Roll delivered VMs back: targets stopped and undefined, sources powered on
    Rollback {
        plan: PathBuf,
        /// This VM
        #[arg(long, conflicts_with = "wave", required_unless_present = "wave")]
        vm: Option<String>,
        /// Every VM of this wave
        #[arg(long)]
        wave: Option<String>,
        /// Delete the volumes the deliveries uploaded (default: kept)
        #[arg(long)]
        delete_volumes: bool,
    },
    /// End delivered VMs' way back (their sources may be retired): refused within the
    /// plan's rollback-window unless closed early with a reason
    Finalize {
        plan: PathBuf,
        /// This VM
        #[arg(long, conflicts_with = "wave", required_unless_present = "wave")]
        vm: Option<String>,
        /// Every VM of this wave
        #[arg(long)]
        wave: Option<String>,
        /// Finalize within the rollback window; the reason and who gave it are journalled
        #[arg(long, value_name = "REASON")]
        close_window: Option<String>,
    },
}

pub fn exec(args: Args) -> anyhow::Result<i32> {
    match args.command {
        Sub::Check { plan, json } => check(plan, json),
        Sub::Run {
            plan,
            wave,
            dry_run,
            retry_failed,
            override_gate,
            json,
        } => run(plan, wave, dry_run, retry_failed, override_gate, json),
        Sub::Status { run_dir, json } => status(run_dir, json),
        Sub::Report {
            run_dir,
            merge,
            out,
        } => match run_dir {
            Some(d) => report(d),
            None => merge_reports(merge, out),
        },
        Sub::Assign {
            plan,
            hosts,
            exclude,
            journals,
            out,
            json,
        } => assign(plan, hosts, exclude, journals, out, json),
        Sub::Rollback {
            plan,
            vm,
            wave,
            delete_volumes,
        } => rollback(plan, vm, wave, delete_volumes),
        Sub::Finalize {
            plan,
            vm,
            wave,
            close_window,
        } => finalize(plan, vm, wave, close_window),
    }
}

/// The plan and the VMs `--vm` or `--wave` select (rollback, finalize).
fn plan_and_selection(
    plan: &std::path::Path,
    vm: Option<String>,
    wave: Option<String>,
) -> anyhow::Result<(plan::Plan, v2k_waves::rollback::Selection)> {
    use v2k_waves::rollback::Selection;
    let p = v2k_waves::plan::load(plan)?;
    let select = match (vm, wave) {
        (Some(v), _) => Selection::Vm(v),
        (None, Some(w)) => Selection::Wave(w),
        (None, None) => anyhow::bail!("--vm or --wave is required"),
    };
    Ok((p, select))
}

/// `v2k wave finalize`: exit 0 every selected VM final, 3 one was refused within
/// its rollback window, 1 one could not be finalized (never delivered, rolled back).
fn finalize(
    plan: PathBuf,
    vm: Option<String>,
    wave: Option<String>,
    close_window: Option<String>,
) -> anyhow::Result<i32> {
    let (p, select) = plan_and_selection(&plan, vm, wave)?;
    if close_window.as_deref().is_some_and(|r| r.trim().is_empty()) {
        anyhow::bail!("--close-window needs a reason");
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let done = v2k_waves::window::finalize(
        &p,
        &select,
        close_window.as_deref(),
        &v2k_waves::gate::who(),
        now,
    )?;
    let mut code = exit::OK;
    let mut o = console::human_stdout();
    for r in done {
        if r.refused {
            code = exit::HELD;
        } else if !r.done {
            code = code.max(exit::FINDINGS);
        }
        writeln!(o, "{}: {}", r.vm, r.outcome)?;
    }
    Ok(code)
}

/// `v2k wave rollback`: each selected VM rolled back (docs/rollback.md); exit 1 when
/// one of them could not be.
fn rollback(
    plan: PathBuf,
    vm: Option<String>,
    wave: Option<String>,
    delete_volumes: bool,
) -> anyhow::Result<i32> {
    let (p, select) = plan_and_selection(&plan, vm, wave)?;
    let opts = v2k_migrate::rollback::Options { delete_volumes };
    let done = v2k_waves::rollback::rollback(&p, &select, &opts, &|vm, m| {
        console::say!("v2k: {vm}: {m}");
    })?;
    let mut code = exit::OK;
    let mut o = console::human_stdout();
    for r in done {
        match r.result {
            Ok(_) => writeln!(o, "{}: rolled back", r.vm)?,
            Err(e) => {
                code = exit::FINDINGS;
                writeln!(o, "{}: FAILED: {e}", r.vm)?;
            }
        }
    }
    Ok(code)
}

/// Loads and checks a plan; plan errors print with line numbers and end with 2.
fn load(
    path: &std::path::Path,
) -> anyhow::Result<Result<(plan::Plan, v2k_waves::CheckReport), Vec<plan::Problem>>> {
    let mut p = match plan::load(path) {
        Ok(p) => p,
        Err(v2k_waves::Error::Plan(problems)) => return Ok(Err(problems)),
        Err(e) => return Err(e).with_context(|| format!("reading plan {}", path.display())),
    };
    let mut warned = std::collections::BTreeSet::new();
    for r in p
        .waves
        .iter()
        .flat_map(|w| &w.vms)
        .filter_map(|v| v.vsphere.as_ref())
    {
        if warned.insert(&r.address.host) {
            crate::commands::vsphere::warn_insecure(
                &r.settings,
                &r.address.host,
                "the plan sets `insecure: true`",
            );
        }
    }
    // Pattern sources become the VMs they match before anything is checked.
    let problems = v2k_waves::expand(&mut p);
    if !problems.is_empty() {
        return Ok(Err(problems));
    }
    let c = v2k_waves::check(&p);
    Ok(Ok((p, c)))
}

fn print_problems(path: &std::path::Path, problems: &[plan::Problem]) {
    for p in problems {
        match p.line {
            Some(l) => console::say!("v2k: error: {}:{l}: {}", path.display(), p.message),
            None => console::say!("v2k: error: {}: {}", path.display(), p.message),
        }
    }
}

fn check(path: PathBuf, json_mode: bool) -> anyhow::Result<i32> {
    let (p, c) = match load(&path)? {
        Ok(x) => x,
        Err(problems) => {
            if json_mode {
                console::emit_json(&json!({"type": "check", "problems": problems, "vms": []}))?;
            }
            print_problems(&path, &problems);
            return Ok(exit::ERROR);
        }
    };
    if json_mode {
        console::emit_json(
            &json!({"type": "check", "run-dir": p.run_dir, "problems": c.problems, "vms": c.vms}),
        )?;
    } else {
        print_problems(&path, &c.problems);
        let mut o = console::human_stdout();
        writeln!(
            o,
            "{:12} {:24} {:5} {:>9}  concerns",
            "WAVE", "VM", "DISKS", "EST MiB"
        )?;
        for v in &c.vms {
            let concerns = v
                .concerns
                .iter()
                .map(|x| {
                    format!(
                        "{}:{}",
                        x["severity"].as_str().unwrap_or(""),
                        x["id"].as_str().unwrap_or("")
                    )
                })
                .collect::<Vec<_>>()
                .join(" ");
            writeln!(
                o,
                "{:12} {:24} {:5} {:>9}  {}",
                console::escape(&v.wave),
                console::escape(&v.name),
                v.disks,
                v.estimated_bytes >> 20,
                concerns
            )?;
            for n in &v.unmapped_networks {
                writeln!(
                    o,
                    "{:12} {:24} network {n:?} is not in the network map: isolated user networking",
                    "", ""
                )?;
            }
            if let Some(b) = v.baseline.as_deref().filter(|b| b.starts_with("none")) {
                writeln!(
                    o,
                    "{:12} {:24} no performance baseline: {}",
                    "",
                    "",
                    console::escape(b)
                )?;
            }
            if let Some(e) = &v.error {
                writeln!(o, "{:12} {:24} WILL FAIL: {}", "", "", console::escape(e))?;
            }
        }
    }
    Ok(c.exit_code())
}

fn run(
    path: PathBuf,
    wave: Option<String>,
    dry_run: bool,
    retry_failed: bool,
    override_gate: Option<String>,
    json_flag: bool,
) -> anyhow::Result<i32> {
    let json_mode = json_flag || !std::io::stdout().is_terminal();
    let (p, c) = match load(&path)? {
        Ok(x) => x,
        Err(problems) => {
            print_problems(&path, &problems);
            return Ok(exit::ERROR);
        }
    };
    if !c.problems.is_empty() {
        print_problems(&path, &c.problems);
        return Ok(exit::ERROR);
    }
    if dry_run {
        for w in p
            .waves
            .iter()
            .filter(|w| wave.as_ref().is_none_or(|n| n == &w.name))
        {
            for v in &w.vms {
                let ck = c.vm(&v.name);
                let line = json!({
                    "type": "plan-vm", "wave": w.name, "vm": v.name, "source": v.source, "out": v.out,
                    "validate": v.validate, "disks": ck.map(|x| x.disks), "error": ck.and_then(|x| x.error.clone()),
                });
                if json_mode {
                    console::emit_json(&line)?;
                } else {
                    println!(
                        "{:12} {:24} -> {}{}",
                        console::escape(&w.name),
                        console::escape(&v.name),
                        console::escape_path(&v.out),
                        if v.validate { "" } else { " (no validation)" }
                    );
                }
            }
        }
        if !json_mode {
            println!("run directory: {}", console::escape_path(&p.run_dir));
        }
        return Ok(exit::OK);
    }
    let bars = (!json_mode || json_flag) && std::io::stderr().is_terminal();
    let ui = Ui::new(bars);
    let events = |e: RunEvent| ui.event(e, json_mode);
    if override_gate
        .as_deref()
        .is_some_and(|r| r.trim().is_empty())
    {
        anyhow::bail!("--override-gate needs a reason (it is journalled)");
    }
    let opts = RunOptions {
        wave,
        retry_failed,
        override_gate,
    };
    let summary = match v2k_waves::run(&p, &c, &opts, &events) {
        Ok(s) => s,
        Err(v2k_waves::Error::Plan(problems)) => {
            print_problems(&path, &problems);
            return Ok(exit::ERROR);
        }
        Err(e) => return Err(e).with_context(|| format!("running {}", path.display())),
    };
    ui.clear();
    if let Some(why) = &summary.held {
        console::say!(
            "v2k: {why}; repair the failures (--retry-failed) or start it anyway with --override-gate \"REASON\""
        );
    }
    if json_mode {
        console::emit_json(
            &json!({"type": "run-finished", "exit-code": summary.exit_code, "run-dir": p.run_dir, "held": summary.held}),
        )?;
    } else {
        let mut o = console::human_stdout();
        for w in &summary.waves {
            let s = &w.summary;
            writeln!(
                o,
                "wave {}: {} migrated ({} validated), {} failed, {} not run",
                w.wave, s.migrated, s.validated, s.failed, s.not_run
            )?;
            for v in &w.vms {
                writeln!(
                    o,
                    "  {:24} {:10} {}",
                    v.name,
                    v.status,
                    v.reason.as_deref().or(v.result.as_deref()).unwrap_or("")
                )?;
            }
            writeln!(
                o,
                "  report: {}",
                p.run_dir.join(&w.wave).join("wave-report.html").display()
            )?;
        }
    }
    if summary.held.is_some() {
        return Ok(exit::HELD);
    }
    Ok(summary.exit_code)
}

fn status(run_dir: PathBuf, json_mode: bool) -> anyhow::Result<i32> {
    let records = v2k_waves::journal::read(&run_dir)
        .with_context(|| format!("reading the journal of {}", run_dir.display()))?;
    if records.is_empty() {
        anyhow::bail!(
            "{}: no journal (not a wave run directory)",
            run_dir.display()
        );
    }
    let live = v2k_waves::journal::is_locked(&run_dir);
    let finished = records.iter().rev().find_map(|r| match (&r.entry, live) {
        (v2k_waves::journal::Entry::RunFinished { exit_code }, false) => Some(*exit_code),
        _ => None,
    });
    let state = if live {
        "running"
    } else if finished.is_some() {
        "finished"
    } else {
        "interrupted"
    };
    let mut worst = exit::OK;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let windows = v2k_waves::window::states(&records, now);
    let mut o = console::human_stdout();
    if !json_mode {
        writeln!(o, "run {}: {state}", run_dir.display())?;
    }
    for w in v2k_waves::report::wave_names(&records) {
        let r = v2k_waves::report::build(&records, &w, live);
        if r.summary.failed + r.summary.not_run > 0 {
            worst = exit::FINDINGS;
        }
        if json_mode {
            drop(o);
            console::emit_json(
                &json!({"type": "wave-status", "run": state, "wave": r.wave, "summary": r.summary,
                "vms": r.vms.iter().map(|v| json!({"vm": v.name, "status": v.status, "result": v.result, "reason": v.reason, "attempts": v.attempts,
                    "rollback": windows.get(&(r.wave.clone(), v.name.clone()))})).collect::<Vec<_>>()}),
            )?;
            o = console::human_stdout();
        } else {
            let s = &r.summary;
            writeln!(
                o,
                "wave {}: {} migrated, {} failed, {} not run, {} pending",
                r.wave, s.migrated, s.failed, s.not_run, s.pending
            )?;
            for v in &r.vms {
                let last = v
                    .stages
                    .last()
                    .map(|s| format!("{} {}", s.stage, s.status))
                    .unwrap_or_default();
                let window = windows
                    .get(&(r.wave.clone(), v.name.clone()))
                    .map(|w| format!(" [{}]", w.describe()))
                    .unwrap_or_default();
                writeln!(
                    o,
                    "  {:24} {:12} {}{window}",
                    v.name,
                    v.status,
                    v.reason.clone().unwrap_or(last)
                )?;
            }
        }
    }
    Ok(if state == "finished" {
        worst
    } else {
        exit::FINDINGS
    })
}

fn report(run_dir: PathBuf) -> anyhow::Result<i32> {
    let records = v2k_waves::journal::read(&run_dir)
        .with_context(|| format!("reading the journal of {}", run_dir.display()))?;
    if records.is_empty() {
        anyhow::bail!(
            "{}: no journal (not a wave run directory)",
            run_dir.display()
        );
    }
    let live = v2k_waves::journal::is_locked(&run_dir);
    let mut worst = exit::OK;
    for w in v2k_waves::report::wave_names(&records) {
        let r = v2k_waves::report::build(&records, &w, live);
        if r.summary.failed + r.summary.not_run + r.summary.pending > 0 {
            worst = exit::FINDINGS;
        }
        let html = v2k_waves::report::write(&run_dir, &r)
            .with_context(|| format!("writing the report of wave {w}"))?;
        println!("{}", console::escape_path(&html));
    }
    Ok(worst)
}

/// `v2k wave report --merge`: one report per wave from several hosts' run
/// directories; exit 1 when a VM did not migrate or migrated on two hosts.
fn merge_reports(dirs: Vec<PathBuf>, out: PathBuf) -> anyhow::Result<i32> {
    let runs = dirs
        .iter()
        .map(|d| {
            v2k_waves::report::HostRun::read(d)
                .with_context(|| format!("reading the run of {}", d.display()))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    v2k_outfile::create_dir(&out).with_context(|| format!("creating {}", out.display()))?;
    let mut worst = exit::OK;
    for r in v2k_waves::report::merge(&runs) {
        let s = &r.summary;
        if s.failed + s.not_run + s.pending + s.conflicts > 0 {
            worst = exit::FINDINGS;
        }
        for c in &r.conflicts {
            console::say!(
                "v2k: wave {}: VM {} migrated on more than one host: {}",
                r.wave,
                c.vm,
                c.hosts.join(", ")
            );
        }
        let html = v2k_waves::report::write(&out, &r)
            .with_context(|| format!("writing the merged report of wave {}", r.wave))?;
        println!("{}", console::escape_path(&html));
    }
    Ok(worst)
}

/// Longest host list file read (a list of thousands of names is far smaller).
const MAX_HOSTS_FILE: u64 = 1 << 20;

/// `--hosts`: a file of names (one a line) when such a file exists, else a comma list.
fn host_list(arg: &str) -> anyhow::Result<Vec<String>> {
    let p = std::path::Path::new(arg);
    let text = if p.is_file() {
        v2k_untrusted::file::read_to_string(p, MAX_HOSTS_FILE, "host list")
            .with_context(|| format!("reading the host list {}", p.display()))?
    } else {
        arg.replace(',', "\n")
    };
    let hosts: Vec<String> = text
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    if hosts.is_empty() {
        anyhow::bail!("--hosts {arg:?}: no conversion host named");
    }
    Ok(hosts)
}

/// `v2k wave assign`: loads and checks the plan as `run` does, splits it, writes the
/// shards and the record, prints one line per shard (or the record as JSON).
fn assign(
    path: PathBuf,
    hosts: String,
    exclude: Vec<String>,
    journals: Vec<PathBuf>,
    out: PathBuf,
    json_mode: bool,
) -> anyhow::Result<i32> {
    let hosts = host_list(&hosts)?;
    let (p, c) = match load(&path)? {
        Ok(x) => x,
        Err(problems) => {
            print_problems(&path, &problems);
            return Ok(exit::ERROR);
        }
    };
    if !c.problems.is_empty() {
        print_problems(&path, &c.problems);
        return Ok(exit::ERROR);
    }
    let previous = v2k_waves::assign::read_record(&out)?;
    let opts = v2k_waves::assign::Options {
        hosts,
        exclude,
        journals,
    };
    let a = v2k_waves::assign::assign(&p, &c, &opts, previous.as_ref())
        .with_context(|| format!("assigning {}", path.display()))?;
    v2k_waves::assign::write(&out, &a)
        .with_context(|| format!("writing into {}", out.display()))?;
    let r = &a.record;
    if json_mode {
        let mut v = serde_json::to_value(r)?;
        if let Some(m) = v.as_object_mut() {
            m.insert("type".into(), json!("assignment"));
        }
        console::emit_json(&v)?;
        return Ok(exit::OK);
    }
    let mut o = console::human_stdout();
    writeln!(
        o,
        "{:20} {:14} {:>5} {:>10}  shares",
        "SHARD", "HOST", "VMS", "GiB"
    )?;
    for s in r.shards.iter().filter(|s| !s.withdrawn) {
        let shares = s
            .shares
            .esxi_hosts
            .iter()
            .map(|(e, n)| format!("{e}={n} disk(s)"))
            .chain(
                s.shares
                    .datastores
                    .iter()
                    .map(|(d, n)| format!("{d}={n} VM(s)")),
            )
            .collect::<Vec<_>>()
            .join(" ");
        writeln!(
            o,
            "{:20} {:14} {:>5} {:>10.1}  {}",
            console::escape(&s.id),
            console::escape(&s.host),
            s.vms.len(),
            s.bytes as f64 / (1u64 << 30) as f64,
            console::escape(&shares)
        )?;
    }
    for m in r.moved.iter().filter(|m| m.generation == r.generation) {
        writeln!(o, "moved {} from {} to {}", m.vm, m.from, m.to)?;
    }
    writeln!(
        o,
        "generation {}: {}",
        r.generation,
        console::escape_path(&out.join(v2k_waves::assign::RECORD_FILE))
    )?;
    Ok(exit::OK)
}

/// The run's display: a bar per running VM on a terminal, JSON Lines on stdout when
/// asked, plain lines on stderr otherwise.
struct Ui {
    multi: Option<MultiProgress>,
    bars: Mutex<HashMap<String, ProgressBar>>,
}

impl Ui {
    fn new(bars: bool) -> Ui {
        Ui {
            multi: bars.then(MultiProgress::new),
            bars: Mutex::new(HashMap::new()),
        }
    }

    fn clear(&self) {
        if let Some(m) = &self.multi {
            let _ = m.clear();
        }
    }

    fn line(&self, s: String) {
        match &self.multi {
            Some(m) => {
                let _ = m.println(console::escape(&s));
            }
            None => console::say!("{s}"),
        }
    }

    fn bar(&self, vm: &str, msg: String, done: bool) {
        let Some(m) = &self.multi else { return };
        let mut bars = self.bars.lock().unwrap_or_else(|p| p.into_inner());
        let b = bars.entry(vm.to_string()).or_insert_with(|| {
            let b = m.add(ProgressBar::new_spinner());
            b.set_style(
                ProgressStyle::with_template("{spinner} {prefix:24} {elapsed:>5} {wide_msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            b.set_prefix(console::escape(vm).into_owned());
            b.enable_steady_tick(std::time::Duration::from_millis(200));
            b
        });
        let msg = console::escape(&msg).into_owned();
        if done {
            b.finish_with_message(msg);
        } else {
            b.set_message(msg);
        }
    }

    /// A bar per disk, under its VM's line: copy, then read-back, then done.
    fn disk_bar(&self, vm: &str, disk: usize, phase: &str, done: u64, total: u64) {
        let Some(m) = &self.multi else { return };
        let mut bars = self.bars.lock().unwrap_or_else(|p| p.into_inner());
        let key = format!("{vm}\u{0}{disk}");
        if !bars.contains_key(&key) {
            let b = ProgressBar::new(total);
            b.set_style(
                ProgressStyle::with_template(
                    "  {prefix:22} [{bar:30}] {bytes:>10}/{total_bytes:10} {wide_msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            b.set_prefix(format!("{} disk {disk}", console::escape(vm)));
            // Below the VM's line and its earlier disks.
            let above = (0..disk)
                .rev()
                .find_map(|d| bars.get(&format!("{vm}\u{0}{d}")))
                .or_else(|| bars.get(vm));
            let b = match above {
                Some(parent) => m.insert_after(parent, b),
                None => m.add(b),
            };
            bars.insert(key.clone(), b);
        }
        if let Some(b) = bars.get(&key) {
            b.set_length(total);
            b.set_position(done.min(total));
            if phase == "done" {
                b.finish_with_message("converted");
            } else {
                b.set_message(phase.to_string());
            }
        }
    }

    fn event(&self, e: RunEvent, json_mode: bool) {
        let j = match &e {
            RunEvent::WaveStarted { wave, vms } => {
                json!({"type": "wave-started", "wave": wave, "vms": vms})
            }
            RunEvent::VmStarted { wave, vm, attempt } => {
                json!({"type": "vm-started", "wave": wave, "vm": vm, "attempt": attempt})
            }
            RunEvent::Stage {
                wave,
                vm,
                stage,
                status,
            } => json!({"type": "stage", "wave": wave, "vm": vm, "stage": stage, "status": status}),
            RunEvent::Message { vm, text } => json!({"type": "message", "vm": vm, "message": text}),
            RunEvent::Disk {
                vm,
                disk,
                phase,
                done,
                total,
            } => {
                json!({"type": "disk-progress", "vm": vm, "disk": disk, "phase": phase, "done": done, "total": total})
            }
            RunEvent::VmVerified { wave, vm } => {
                json!({"type": "vm-verified", "wave": wave, "vm": vm})
            }
            RunEvent::VmFinished {
                wave,
                vm,
                status,
                result,
                reason,
                seconds,
            } => {
                json!({"type": "vm-finished", "wave": wave, "vm": vm, "status": status, "result": result, "reason": reason, "seconds": seconds})
            }
            RunEvent::VmNotRun { wave, vm, reason } => {
                json!({"type": "vm-not-run", "wave": wave, "vm": vm, "reason": reason})
            }
            RunEvent::WaveFinished { wave, report, html } => {
                json!({"type": "wave-finished", "wave": wave, "summary": report.summary, "report-html": html, "overhead-seconds": report.overhead_seconds, "metrics": report.metrics})
            }
            RunEvent::Gate {
                wave,
                overridden,
                message,
            } => {
                json!({"type": "gate", "wave": wave, "decision": if *overridden { "overridden" } else { "refused" }, "message": message})
            }
        };
        if json_mode {
            let _ = console::emit_json(&j);
        }
        if json_mode && self.multi.is_none() {
            return;
        }
        match e {
            RunEvent::WaveStarted { wave, vms } => {
                self.line(format!("v2k: wave {wave}: {vms} VM(s)"))
            }
            RunEvent::VmStarted { vm, attempt, .. } => {
                self.bar(&vm, format!("started (attempt {attempt})"), false)
            }
            RunEvent::Stage {
                vm, stage, status, ..
            } => self.bar(&vm, format!("{stage}: {status}"), false),
            RunEvent::Message { vm, text } => {
                if self.multi.is_none() {
                    console::say!("v2k: {vm}:   {text}");
                }
            }
            RunEvent::Disk {
                vm,
                disk,
                phase,
                done,
                total,
            } => self.disk_bar(&vm, disk, &phase, done, total),
            RunEvent::VmVerified { vm, .. } => {
                self.line(format!("v2k: {vm}: finished earlier, re-verified, skipped"))
            }
            RunEvent::VmFinished {
                vm,
                status,
                result,
                reason,
                seconds,
                ..
            } => {
                let what = match status {
                    VmStatus::Migrated => format!(
                        "migrated ({}) in {seconds:.0} s",
                        result.unwrap_or_default()
                    ),
                    VmStatus::Failed => format!("FAILED: {}", reason.unwrap_or_default()),
                };
                self.bar(&vm, what.clone(), true);
                if self.multi.is_none() {
                    console::say!("v2k: {vm}: {what}");
                }
            }
            RunEvent::VmNotRun { vm, reason, .. } => {
                self.line(format!("v2k: {vm}: not run: {reason}"))
            }
            RunEvent::WaveFinished { wave, html, .. } => {
                self.line(format!("v2k: wave {wave} finished: {}", html.display()))
            }
            // A refusal is said once, at the end, with what to do about it.
            RunEvent::Gate {
                overridden: true,
                message,
                ..
            } => self.line(format!(
                "v2k: {message}; overridden (--override-gate), journalled"
            )),
            RunEvent::Gate { .. } => {}
        }
    }
}
