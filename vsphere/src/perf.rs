//! A VM's performance before migration, from vSphere's PerformanceManager: the last
//! day of the 5-minute historical samples (`QueryPerf`, interval 300 s) of CPU ready,
//! virtual-disk latency and NIC drops, summed up as min / median / p95 per metric.
//! This is the "before" of docs/evidence.md; what the server sends is untrusted, so
//! samples and series are bounded and every value is checked.
//!
//! Counter ids differ between servers, so they are looked up by name
//! (`group.name.rollup`) in the manager's `perfCounter` list. A counter the server does
//! not have is reported as missing, not as zero.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::client::{Client, MoRef, PropertySpec};
use crate::xml::Element;
use crate::{Error, Result};

/// The historical interval whose samples cover a day: vCenter keeps 5-minute samples
/// for one day (statistics level 1 and up).
pub const INTERVAL_SECONDS: u32 = 300;
/// One day of 5-minute samples.
pub const MAX_SAMPLES: usize = 288;
/// Series (counter × instance) read from one answer: a VM has a few disks and NICs per
/// counter; more is not a VM's answer.
const MAX_SERIES: usize = 1024;

/// The counters read, by their vSphere names.
pub const CPU_READY: &str = "cpu.ready.summation";
pub const DISK_READ_LATENCY: &str = "virtualDisk.totalReadLatency.average";
pub const DISK_WRITE_LATENCY: &str = "virtualDisk.totalWriteLatency.average";
pub const NET_DROPPED_RX: &str = "net.droppedRx.summation";
pub const NET_DROPPED_TX: &str = "net.droppedTx.summation";
const COUNTERS: [&str; 5] = [
    CPU_READY,
    DISK_READ_LATENCY,
    DISK_WRITE_LATENCY,
    NET_DROPPED_RX,
    NET_DROPPED_TX,
];

/// min / median / p95 of one metric over the samples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Stats {
    /// The vSphere counter it comes from.
    pub counter: String,
    pub unit: String,
    pub samples: usize,
    pub min: f64,
    pub median: f64,
    pub p95: f64,
}

/// What the PerformanceManager says about one VM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Baseline {
    /// The VM's managed object id on the server; empty (and absent) for a baseline
    /// made by booting a local source ([`Baseline::boot`]).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub moref: String,
    pub interval_seconds: u32,
    /// Unix seconds: the start of the day asked for, and when it was asked.
    pub from: u64,
    pub to: u64,
    /// By metric: `cpu-ready-percent`, `disk-read-latency-ms`,
    /// `disk-write-latency-ms`, `net-dropped-rx`, `net-dropped-tx` (packets per
    /// interval).
    pub metrics: BTreeMap<String, Stats>,
    /// Counters the server does not offer or sent no sample of.
    pub missing: Vec<String>,
    /// Set when the figures come from booting the source in its own shape under QEMU
    /// (`--baseline-boot`): one sample each, since that boot (`from` is its start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot: Option<BootBaseline>,
}

/// How a baseline boot ran (docs/evidence.md, "Baseline by booting the source").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct BootBaseline {
    /// The source's hardware as QEMU had it: `q35, bios, pvscsi (scsi0), vmxnet3`.
    pub shape: String,
    /// `kvm`, or `tcg` (not production timings).
    pub accel: String,
    /// Seconds from power-on to the agent's report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_seconds: Option<f64>,
    /// The boot's serial console log.
    pub serial_log: PathBuf,
}

/// The schema version of `NAME.baseline.json`.
pub const FILE_SCHEMA_VERSION: u32 = 1;
/// A baseline file is a few kilobytes; anything much larger is not one.
const MAX_FILE_BYTES: u64 = 1 << 20;

/// `NAME.baseline.json` as `v2k baseline` and a wave's first run write it, and as
/// `v2k migrate --baseline` and the wave runner read it (docs/evidence.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct BaselineFile {
    pub schema_version: u32,
    pub vm: String,
    /// The address the VM was read from.
    pub source: String,
    pub baseline: Baseline,
}

/// A baseline file that cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {why}")]
pub struct BaselineFileError {
    pub path: PathBuf,
    pub why: String,
}

impl BaselineFile {
    /// Reads `vm`'s last day from the server (`now`: Unix seconds): what `v2k
    /// baseline` writes and a wave's first run records.
    pub fn take(client: &Client, vm: &v2k_inventory::model::Vm, now: u64) -> Result<BaselineFile> {
        let Some(vs) = &vm.vsphere else {
            return Err(Error::Usage(format!(
                "{}: not a vSphere VM (a local VM has no performance history)",
                vm.name
            )));
        };
        let moref = MoRef::new("VirtualMachine", vs.moref.clone());
        Ok(BaselineFile {
            schema_version: FILE_SCHEMA_VERSION,
            vm: vm.name.clone(),
            source: vm.source.path.display().to_string(),
            baseline: baseline(client, &moref, now)?,
        })
    }

    /// Reads and checks `path` (bounded: the file may come from anywhere).
    pub fn read(path: &Path) -> std::result::Result<BaselineFile, BaselineFileError> {
        let err = |why: String| BaselineFileError {
            path: path.into(),
            why,
        };
        let b = v2k_untrusted::file::read(path, MAX_FILE_BYTES, "a baseline file")
            .map_err(|e| err(e.to_string()))?;
        let f: BaselineFile =
            serde_json::from_slice(&b).map_err(|e| err(format!("not a v2k baseline file: {e}")))?;
        if f.schema_version != FILE_SCHEMA_VERSION {
            return Err(err(format!(
                "baseline schema {} is not readable by this v2k (reads {FILE_SCHEMA_VERSION})",
                f.schema_version
            )));
        }
        if let Some((m, _)) = f
            .baseline
            .metrics
            .iter()
            .find(|(_, s)| ![s.min, s.median, s.p95].iter().all(|v| v.is_finite()))
        {
            return Err(err(format!("{m}: a figure is not a number")));
        }
        Ok(f)
    }
}

/// The name a counter's figure has in the baseline, its unit, and how the per-device
/// series of one sample combine (the worst disk's latency; all NICs' drops).
fn metric_of(counter: &str) -> (&'static str, &'static str, Combine) {
    match counter {
        CPU_READY => ("cpu-ready-percent", "% of interval", Combine::Sum),
        DISK_READ_LATENCY => ("disk-read-latency-ms", "ms", Combine::Max),
        DISK_WRITE_LATENCY => ("disk-write-latency-ms", "ms", Combine::Max),
        NET_DROPPED_RX => ("net-dropped-rx", "packets per interval", Combine::Sum),
        _ => ("net-dropped-tx", "packets per interval", Combine::Sum),
    }
}

#[derive(Clone, Copy)]
enum Combine {
    Sum,
    Max,
}

/// Reads the last day's baseline of `vm` (a `VirtualMachine` moref); `now` is Unix
/// seconds.
pub fn baseline(client: &Client, vm: &MoRef, now: u64) -> Result<Baseline> {
    let pm = client
        .content()?
        .perf_manager
        .ok_or_else(|| Error::protocol("ServiceContent", "no PerformanceManager"))?;
    let counters = client.block_on(client.session().retrieve_one(
        &pm,
        &PropertySpec {
            kind: "PerformanceManager".into(),
            paths: vec!["perfCounter".into()],
        },
    ))?;
    let ids = counter_ids(counters.get("perfCounter"));
    let from = now.saturating_sub(u64::from(INTERVAL_SECONDS) * MAX_SAMPLES as u64);
    let mut spec = format!(
        "<querySpec>{}<startTime>{}</startTime><maxSample>{MAX_SAMPLES}</maxSample>",
        vm.to_xml("entity"),
        rfc3339(from)
    );
    for name in COUNTERS {
        if let Some(id) = ids.get(name) {
            // `*`: every instance (each disk, each NIC, and the VM-wide "" one).
            spec.push_str(&format!(
                "<metricId><counterId>{id}</counterId><instance>*</instance></metricId>"
            ));
        }
    }
    spec.push_str(&format!(
        "<intervalId>{INTERVAL_SECONDS}</intervalId><format>normal</format></querySpec>"
    ));
    let answer = client.call("QueryPerf", &pm, &spec)?;
    let by_id: BTreeMap<i64, &str> = ids.iter().map(|(n, i)| (*i, *n)).collect();
    summarize(&answer, &by_id, vm, from, now)
}

/// `name → key` of the counters v2k reads, from the `perfCounter` property (public
/// for fuzzing).
pub fn counter_ids(list: Option<&Element>) -> BTreeMap<&'static str, i64> {
    let mut m = BTreeMap::new();
    for c in list.map(|l| l.children.as_slice()).unwrap_or_default() {
        let part = |n: &str| c.child(n).and_then(|x| x.child_text("key")).map(str::trim);
        let (Some(g), Some(n), Some(r)) = (
            part("groupInfo"),
            part("nameInfo"),
            c.child_text("rollupType").map(str::trim),
        ) else {
            continue;
        };
        let name = format!("{g}.{n}.{r}");
        if let (Some(known), Some(key)) = (
            COUNTERS.iter().find(|k| **k == name),
            c.child_text("key").and_then(|k| k.trim().parse().ok()),
        ) {
            m.entry(*known).or_insert(key);
        }
    }
    m
}

/// The statistics of a QueryPerf answer; `names` maps counter keys to the counters
/// v2k reads (public for fuzzing).
pub fn summarize(
    answer: &Element,
    names: &BTreeMap<i64, &'static str>,
    vm: &MoRef,
    from: u64,
    now: u64,
) -> Result<Baseline> {
    let bad = |m: String| Error::protocol("QueryPerf", m);
    let entity = answer.child("returnval");
    // Per sample, the interval it covers (for CPU ready as a percentage).
    let intervals: Vec<f64> = entity
        .map(|e| e.children_named("sampleInfo").collect::<Vec<_>>())
        .unwrap_or_default()
        .iter()
        .take(MAX_SAMPLES)
        .map(|s| {
            s.child_text("interval")
                .and_then(|i| i.trim().parse::<f64>().ok())
                .filter(|i| *i > 0.0)
                .unwrap_or(f64::from(INTERVAL_SECONDS))
        })
        .collect();
    // counter → instance → samples
    let mut series: BTreeMap<&str, BTreeMap<String, Vec<i64>>> = BTreeMap::new();
    for (n, v) in entity
        .map(|e| e.children_named("value").collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .enumerate()
    {
        if n >= MAX_SERIES {
            return Err(bad(format!("more than {MAX_SERIES} series")));
        }
        let id = v.child("id");
        let Some(name) = id
            .and_then(|i| i.child_text("counterId"))
            .and_then(|c| c.trim().parse::<i64>().ok())
            .and_then(|c| names.get(&c))
        else {
            continue;
        };
        let instance = id
            .and_then(|i| i.child_text("instance"))
            .unwrap_or_default()
            .trim()
            .to_string();
        let values = v
            .children_named("value")
            .take(MAX_SAMPLES)
            .map(|x| {
                x.text
                    .trim()
                    .parse::<i64>()
                    .map_err(|_| bad(format!("{name}: sample {:?} is not a number", x.text)))
            })
            .collect::<Result<Vec<i64>>>()?;
        series.entry(name).or_default().insert(instance, values);
    }
    let mut metrics = BTreeMap::new();
    let mut missing = Vec::new();
    for counter in COUNTERS {
        let (metric, unit, combine) = metric_of(counter);
        let per_sample = series.get(counter).map(|s| combine_instances(s, combine));
        let mut values: Vec<f64> = Vec::new();
        for (i, v) in per_sample.unwrap_or_default().into_iter().enumerate() {
            let Some(v) = v else { continue };
            values.push(if counter == CPU_READY {
                // Milliseconds ready in the interval, as a share of it.
                v as f64 / (intervals.get(i).copied().unwrap_or(300.0) * 1000.0) * 100.0
            } else {
                v as f64
            });
        }
        match stats(&mut values) {
            Some((min, median, p95)) => {
                metrics.insert(
                    metric.to_string(),
                    Stats {
                        counter: counter.into(),
                        unit: unit.into(),
                        samples: values.len(),
                        min,
                        median,
                        p95,
                    },
                );
            }
            None => missing.push(counter.to_string()),
        }
    }
    Ok(Baseline {
        moref: vm.value.clone(),
        interval_seconds: INTERVAL_SECONDS,
        from,
        to: now,
        metrics,
        missing,
        boot: None,
    })
}

/// One value per sample from a counter's instances: the VM-wide instance (`""`) when
/// the server sent it (it already is the sum over devices), else each device combined.
/// vSphere's `-1` means "no sample" and is left out.
fn combine_instances(s: &BTreeMap<String, Vec<i64>>, how: Combine) -> Vec<Option<i64>> {
    let valid = |v: i64| (v >= 0).then_some(v);
    if let Some(all) = s.get("") {
        return all.iter().map(|v| valid(*v)).collect();
    }
    let len = s.values().map(Vec::len).max().unwrap_or(0);
    (0..len)
        .map(|i| {
            let vals = s.values().filter_map(|v| v.get(i).copied().and_then(valid));
            match how {
                Combine::Max => vals.max(),
                Combine::Sum => vals.reduce(|a, b| a.saturating_add(b)),
            }
        })
        .collect()
}

/// min, median and 95th percentile (nearest rank) of `v`; `None` when empty.
pub fn stats(v: &mut [f64]) -> Option<(f64, f64, f64)> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    // Nearest rank: the smallest value with at least 95 % of the samples at or below.
    let rank = (n * 95).div_ceil(100).max(1);
    Some((v[0], median, v[rank - 1]))
}

/// Unix seconds as an xsd:dateTime in UTC (`2026-12-07T06:41:13Z`).
fn rfc3339(t: u64) -> String {
    let days = (t / 86400) as i64;
    let secs = t % 86400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_dates_in_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_796_625_673), "2026-12-07T06:41:13Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn stats_are_min_median_and_nearest_rank_p95() {
        let mut v: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        assert_eq!(stats(&mut v), Some((1.0, 50.5, 95.0)));
        assert_eq!(stats(&mut [7.0]), Some((7.0, 7.0, 7.0)));
        assert_eq!(stats(&mut []), None);
    }

    fn answer(xml: &str) -> Element {
        crate::xml::parse(xml.as_bytes()).unwrap()
    }

    #[test]
    fn cpu_ready_is_a_share_of_the_interval_and_devices_combine() {
        let a = answer(
            "<r xmlns=\"urn:vim25\"><returnval>\
             <sampleInfo><interval>300</interval></sampleInfo>\
             <sampleInfo><interval>300</interval></sampleInfo>\
             <value><id><counterId>1</counterId><instance></instance></id><value>3000</value><value>-1</value></value>\
             <value><id><counterId>2</counterId><instance>scsi0:0</instance></id><value>4</value><value>9</value></value>\
             <value><id><counterId>2</counterId><instance>scsi0:1</instance></id><value>7</value><value>1</value></value>\
             </returnval></r>",
        );
        let names = BTreeMap::from([(1, CPU_READY), (2, DISK_READ_LATENCY)]);
        let b = summarize(&a, &names, &MoRef::new("VirtualMachine", "vm-1"), 0, 1).unwrap();
        let cpu = &b.metrics["cpu-ready-percent"];
        // 3000 ms of 300 s is 1 %; the -1 sample is no sample.
        assert_eq!((cpu.samples, cpu.min, cpu.p95), (1, 1.0, 1.0));
        // The worst disk per sample: 7 then 9.
        let d = &b.metrics["disk-read-latency-ms"];
        assert_eq!((d.min, d.median, d.p95), (7.0, 8.0, 9.0));
        assert!(b.missing.contains(&NET_DROPPED_RX.to_string()));
    }

    #[test]
    fn a_baseline_file_reads_back_and_a_foreign_one_is_named() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.baseline.json");
        let f = BaselineFile {
            schema_version: FILE_SCHEMA_VERSION,
            vm: "a".into(),
            source: "vsphere://u@h/DC0/vm/a".into(),
            baseline: Baseline {
                moref: "vm-1".into(),
                interval_seconds: INTERVAL_SECONDS,
                from: 0,
                to: 86400,
                metrics: BTreeMap::from([(
                    "cpu-ready-percent".to_string(),
                    Stats {
                        counter: CPU_READY.into(),
                        unit: "% of interval".into(),
                        samples: 3,
                        min: 0.5,
                        median: 1.0,
                        p95: 2.0,
                    },
                )]),
                missing: vec![NET_DROPPED_RX.into()],
                boot: None,
            },
        };
        std::fs::write(&p, serde_json::to_vec(&f).unwrap()).unwrap();
        assert_eq!(BaselineFile::read(&p).unwrap(), f);
        std::fs::write(&p, r#"{"schema-version": 7}"#).unwrap();
        let e = BaselineFile::read(&p).unwrap_err().to_string();
        assert!(
            e.contains("a.baseline.json") && e.contains("not a v2k baseline"),
            "{e}"
        );
        let mut v = serde_json::to_value(&f).unwrap();
        v["schema-version"] = 2.into();
        std::fs::write(&p, v.to_string()).unwrap();
        let e = BaselineFile::read(&p).unwrap_err().to_string();
        assert!(e.contains("baseline schema 2"), "{e}");
    }

    #[test]
    fn a_sample_that_is_not_a_number_is_refused() {
        let a = answer(
            "<r><returnval><value><id><counterId>1</counterId></id><value>x</value></value></returnval></r>",
        );
        let names = BTreeMap::from([(1, CPU_READY)]);
        let e = summarize(&a, &names, &MoRef::new("VirtualMachine", "vm-1"), 0, 1).unwrap_err();
        assert!(e.to_string().contains("not a number"), "{e}");
    }
}
