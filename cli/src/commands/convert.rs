//! `v2k convert SRC.vmdk... -o OUT`: VMDK disks to QCOW2 or raw, verified.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde_json::json;
use v2k_converters::convert::{self, Event, Format, Job, Options, Progress};
use v2k_converters::vmdk::Source;

use crate::{console, exit};

/// Convert VMDK disks to QCOW2 or raw, verified by content hash
#[derive(clap::Args)]
pub struct Args {
    /// VMDK files to convert (descriptor or binary; snapshot deltas are consolidated)
    #[arg(required = true)]
    sources: Vec<PathBuf>,
    /// Output file, or a directory when several sources are given
    #[arg(short, long)]
    output: PathBuf,
    /// Output format
    #[arg(long, value_enum, default_value_t = FormatArg::Qcow2)]
    format: FormatArg,
    /// Compress QCOW2 clusters with deflate
    #[arg(long)]
    compress: bool,
    /// QCOW2 cluster size in bytes (power of two, 512..2097152)
    #[arg(long, default_value_t = 65536)]
    cluster_size: u64,
    /// Worker threads (default: one per CPU; at most 64, more is lowered with a warning)
    #[arg(long)]
    threads: Option<usize>,
    /// Disks converted at the same time
    #[arg(long, default_value_t = 2)]
    parallel_disks: usize,
    /// Skip reading the output back to verify its content hash
    #[arg(long)]
    no_verify: bool,
    /// Replace existing outputs
    #[arg(long)]
    force: bool,
    /// JSON Lines on stdout: progress events and one result per disk
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum FormatArg {
    Qcow2,
    Raw,
}

/// Progress to JSON Lines (stdout) or indicatif bars (stderr, terminals only).
struct Reporter {
    json: bool,
    bars: Option<(MultiProgress, Vec<ProgressBar>)>,
    last: Mutex<Vec<Instant>>,
    names: Vec<String>,
}

/// Minimum interval between two JSON progress events of one disk.
const JSON_PROGRESS_INTERVAL: Duration = Duration::from_millis(250);

impl Progress for Reporter {
    fn event(&self, e: Event) {
        if self.json {
            let v = match e {
                Event::Started {
                    disk,
                    virtual_size,
                    allocated_bytes,
                } => json!({
                    "type": "started", "disk": disk, "source": self.names[disk],
                    "virtual-size": virtual_size, "allocated-bytes": allocated_bytes }),
                Event::Copied { disk, done } | Event::Verified { disk, done } => {
                    let phase = if matches!(e, Event::Copied { .. }) {
                        "copy"
                    } else {
                        "verify"
                    };
                    if let Ok(mut last) = self.last.lock() {
                        if last[disk].elapsed() < JSON_PROGRESS_INTERVAL {
                            return;
                        }
                        last[disk] = Instant::now();
                    }
                    json!({ "type": "progress", "disk": disk, "phase": phase, "done": done })
                }
                Event::Verifying { disk } => json!({ "type": "verifying", "disk": disk }),
                Event::Finished { .. } => return,
            };
            let _ = console::emit_json(&v);
            return;
        }
        let Some((_, bars)) = &self.bars else { return };
        match e {
            Event::Started {
                disk, virtual_size, ..
            } => {
                bars[disk].set_length(virtual_size);
                bars[disk].set_message("copy");
            }
            Event::Copied { disk, done } => bars[disk].set_position(done),
            Event::Verifying { disk } => {
                bars[disk].set_position(0);
                bars[disk].set_message("verify");
            }
            Event::Verified { disk, done } => bars[disk].set_position(done),
            Event::Finished { disk } => bars[disk].finish_with_message("done"),
        }
    }
}

fn output_for(src: &Path, out: &Path, many: bool, format: Format) -> anyhow::Result<PathBuf> {
    if many || out.is_dir() {
        let stem = src
            .file_stem()
            .with_context(|| format!("{}: source names no file", src.display()))?;
        let mut name = stem.to_os_string();
        name.push(".");
        name.push(format.name());
        Ok(out.join(name))
    } else {
        Ok(out.to_path_buf())
    }
}

pub fn exec(args: Args) -> anyhow::Result<i32> {
    let threads = match args.threads {
        Some(0) => bail!("--threads must be at least 1"),
        Some(n) if n > convert::MAX_THREADS => {
            eprintln!(
                "v2k: warning: --threads {n} lowered to {}: memory grows by about 8 MiB per \
                 worker (docs/convert.md)",
                convert::MAX_THREADS
            );
            convert::MAX_THREADS
        }
        Some(n) => n,
        None => std::thread::available_parallelism()
            .map_or(1, usize::from)
            .min(convert::MAX_THREADS),
    };
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .context("starting the worker pool")?;
    let format = match args.format {
        FormatArg::Qcow2 => Format::Qcow2,
        FormatArg::Raw => Format::Raw,
    };
    let many = args.sources.len() > 1;
    let mut jobs = Vec::new();
    for src in &args.sources {
        let output = output_for(src, &args.output, many, format)?;
        jobs.push(Job {
            source: Source::file(src),
            output,
        });
    }
    // Two sources named alike (a/x.vmdk, b/x.vmdk) must not share one output: refused
    // before anything is written, --force or not.
    let pairs: Vec<(&Path, &Path)> = jobs
        .iter()
        .map(|j| (j.source.path.as_path(), j.output.as_path()))
        .collect();
    convert::check_distinct_outputs(&pairs)?;
    if many {
        std::fs::create_dir_all(&args.output)
            .with_context(|| format!("creating output directory {}", args.output.display()))?;
    }
    let opts = Options {
        format,
        cluster_size: args.cluster_size,
        compress: args.compress,
        verify: !args.no_verify,
        overwrite: args.force,
    };
    let names: Vec<String> = args
        .sources
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    let bars = (!args.json && console::stderr_is_terminal()).then(|| {
        let mp = MultiProgress::new();
        let style = ProgressStyle::with_template(
            "{prefix:30!} {msg:6} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        let bars = names
            .iter()
            .map(|n| {
                let b = mp.add(ProgressBar::new(0));
                b.set_style(style.clone());
                b.set_prefix(n.clone());
                b
            })
            .collect();
        (mp, bars)
    });
    let reporter = Reporter {
        json: args.json,
        bars,
        last: Mutex::new(vec![Instant::now() - JSON_PROGRESS_INTERVAL; jobs.len()]),
        names,
    };
    let results = convert::convert_all(&jobs, &opts, args.parallel_disks, &reporter);
    let mut failed = 0;
    for (job, result) in jobs.iter().zip(results) {
        match result {
            Ok(m) => {
                if args.json {
                    let mut v = serde_json::to_value(&m)?;
                    v["type"] = json!("converted");
                    console::emit_json(&v)?;
                } else {
                    use std::io::Write;
                    let mut out = console::human_stdout();
                    writeln!(
                        out,
                        "{} -> {}: {} virtual, {} data, {:.1} s copy ({:.0} MiB/s), {}",
                        job.source.path.display(),
                        m.output.path.display(),
                        human(m.source.virtual_size),
                        human(m.output.data_bytes),
                        m.timing.copy_seconds,
                        m.timing.virtual_mib_per_second,
                        if m.hash.verified {
                            format!("verified {}", &m.hash.source[..16])
                        } else {
                            "not verified".into()
                        },
                    )?;
                }
            }
            Err(e) => {
                failed += 1;
                if args.json {
                    console::emit_json(&json!({
                        "type": "error", "source": job.source.path, "output": job.output,
                        "kind": format!("{:?}", e.kind()), "message": format!("{:#}", anyhow::Error::from(e)) }))?;
                } else {
                    console::say!("v2k: error: {:#}", anyhow::Error::from(e));
                }
            }
        }
    }
    Ok(if failed == 0 { exit::OK } else { exit::ERROR })
}

/// Bytes in binary units with one decimal, for the human summary.
pub fn human(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
