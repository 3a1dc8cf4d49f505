//! `v2k wave assign`: a plan's VMs split over several conversion hosts, one shard plan
//! per host (an ordinary plan that `v2k wave run` runs unchanged) and an assignment
//! record (`assignment.json`, schema version 1, docs/scale-out.md).
//!
//! The split balances the bytes to copy (the inspection's estimate of each VM) wave by
//! wave, so the hosts finish each wave at about the same time, and divides the limits
//! that are shared by every conversion host — the disks in flight per ESXi host
//! (`limits.esxi-host-disks`, Forklift's per-host limit) and the VMs at once per
//! datastore — between the hosts: each shard's share is written into its plan
//! (`limits.esxi-hosts`, `limits.datastores`), and the shares of one ESXi host or
//! datastore add up to at most its budget, so no host can exceed the budget even when
//! every host runs flat out. A shard's share is never below its largest VM there
//! (disks for an ESXi host, 1 for a datastore).
//!
//! Shares are held per conversion host, and one host runs its shards one after the
//! other: a host's later shards may hold a larger share (never a smaller one), and the
//! sum over the hosts still in service stays within the budget.
//!
//! Reassigning (the same OUTDIR, whose `assignment.json` is the previous generation,
//! with `exclude` and the journals fetched so far): the shards of an excluded host are
//! withdrawn, the VMs their journals do not show migrated move to new shards on the
//! other hosts (`HOST.gN.yaml`), within the budget the excluded host held; nothing
//! else moves and no existing shard file changes (a shard's hash is its run's
//! identity: `v2k wave run` resumes it).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_norway::{Mapping, Value};
use sha2::Digest;
use v2k_migrate::vsphere::Address;

use crate::check::CheckReport;
use crate::journal::{Entry, VmStatus};
use crate::plan::{valid_name, Plan};
use crate::{Error, Result};

/// The assignment record's schema version.
pub const SCHEMA_VERSION: u32 = 1;
/// The record's file name in the output directory.
pub const RECORD_FILE: &str = "assignment.json";

/// What to split the plan over.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The conversion hosts, as Ansible's inventory names them.
    pub hosts: Vec<String>,
    /// Hosts lost: their shards are withdrawn and their unfinished VMs move.
    pub exclude: Vec<String>,
    /// Run directories fetched from the hosts (each with its `journal.jsonl`).
    pub journals: Vec<PathBuf>,
}

/// `assignment.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Record {
    pub schema_version: u32,
    /// The plan file, absolute.
    pub plan: PathBuf,
    /// SHA-256 of the plan's bytes: a reassignment must split the same plan.
    pub plan_hash: String,
    /// 1 for the first assignment, one more at each reassignment.
    pub generation: u32,
    /// The shared budgets split between the hosts: disks in flight per ESXi host,
    /// VMs at once per datastore (only the limited ones).
    pub budgets: Budgets,
    pub hosts: Vec<HostRecord>,
    pub shards: Vec<Shard>,
    /// VMs moved off an excluded host's shard, and where to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub moved: Vec<Moved>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Budgets {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub esxi_hosts: BTreeMap<String, usize>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub datastores: BTreeMap<String, usize>,
}

/// A conversion host and the shares of the budgets it holds now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct HostRecord {
    pub name: String,
    /// Excluded (lost): holds no share, runs no shard.
    pub excluded: bool,
    pub shares: Budgets,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Shard {
    /// `HOST` for the first generation, `HOST.gN` after.
    pub id: String,
    pub host: String,
    pub generation: u32,
    /// The shard plan's file name in the output directory (`ID.yaml`).
    pub plan: String,
    /// SHA-256 of the shard plan: its run's journal names it.
    pub plan_hash: String,
    /// Withdrawn with its host: not to be run again.
    pub withdrawn: bool,
    /// The budgets' shares written into the shard plan.
    pub shares: Budgets,
    pub bytes: u64,
    pub vms: Vec<ShardVm>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ShardVm {
    pub wave: String,
    pub name: String,
    pub bytes: u64,
    pub disks: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub esxi_host: Option<String>,
    pub datastore: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Moved {
    pub vm: String,
    pub from: String,
    pub to: String,
    pub generation: u32,
}

/// The record and the shard plans to write (file name, text).
#[derive(Debug, Clone)]
pub struct Assignment {
    pub record: Record,
    pub files: Vec<(String, String)>,
}

fn fail(m: impl Into<String>) -> Error {
    Error::Run(m.into())
}

/// One VM to place: what the split weighs and the budgets it draws on.
#[derive(Debug, Clone)]
struct Load {
    wave: usize,
    /// Index in the plan's VM order (ties and stable output).
    order: usize,
    name: String,
    bytes: u64,
    disks: usize,
    esxi_host: Option<String>,
    datastore: String,
}

/// The budgets' state while placing: what each host holds, what is still free.
#[derive(Debug, Clone, Default)]
struct Pool {
    /// Per budget key: the total; absent: no limit.
    total: BTreeMap<Key, usize>,
    /// Per host, per key: its share.
    held: BTreeMap<String, BTreeMap<Key, usize>>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Key {
    Esxi(String),
    Datastore(String),
}

impl Pool {
    fn free(&self, k: &Key) -> usize {
        let used: usize = self.held.values().filter_map(|m| m.get(k)).sum();
        self.total
            .get(k)
            .map_or(usize::MAX, |t| t.saturating_sub(used))
    }

    /// What placing a VM needing `need` of `k` on `host` costs from the free budget,
    /// or `None` when it does not fit.
    fn cost(&self, host: &str, k: &Key, need: usize) -> Option<usize> {
        if !self.total.contains_key(k) {
            return Some(0);
        }
        let have = self
            .held
            .get(host)
            .and_then(|m| m.get(k))
            .copied()
            .unwrap_or(0);
        let extra = need.saturating_sub(have);
        (extra <= self.free(k)).then_some(extra)
    }

    fn take(&mut self, host: &str, k: &Key, need: usize) {
        if self.total.contains_key(k) {
            let e = self
                .held
                .entry(host.to_string())
                .or_default()
                .entry(k.clone())
                .or_insert(0);
            *e = (*e).max(need);
        }
    }

    /// The budget left over after placing goes to the hosts that got VMs of that key
    /// in this generation, evenly (more parallelism where the work is).
    fn spread(&mut self, users: &BTreeMap<Key, BTreeSet<String>>) {
        for (k, hosts) in users {
            let left = self.free(k);
            if left == 0 || left == usize::MAX || hosts.is_empty() {
                continue;
            }
            let each = left / hosts.len();
            for (i, h) in hosts.iter().enumerate() {
                let add = each + usize::from(i < left - each * hosts.len());
                *self
                    .held
                    .entry(h.clone())
                    .or_default()
                    .entry(k.clone())
                    .or_insert(0) += add;
            }
        }
    }

    fn shares(&self, host: &str) -> Budgets {
        let mut b = Budgets::default();
        for (k, n) in self.held.get(host).into_iter().flatten() {
            match k {
                Key::Esxi(e) => b.esxi_hosts.insert(e.clone(), *n),
                Key::Datastore(d) => b.datastores.insert(d.clone(), *n),
            };
        }
        b
    }
}

impl Load {
    fn keys(&self) -> Vec<(Key, usize)> {
        let mut k = vec![(Key::Datastore(self.datastore.clone()), 1)];
        if let Some(e) = &self.esxi_host {
            k.push((Key::Esxi(e.clone()), self.disks.max(1)));
        }
        k
    }
}

/// Places `vms` on `hosts` (largest first within each wave, on the host with the
/// least bytes in that wave, then overall, that the budgets allow). `loads`: bytes the
/// hosts already carry.
fn place(
    vms: &[Load],
    hosts: &[String],
    pool: &mut Pool,
    loads: &mut BTreeMap<String, u64>,
) -> Result<BTreeMap<String, Vec<usize>>> {
    let mut out: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    let mut users: BTreeMap<Key, BTreeSet<String>> = BTreeMap::new();
    let waves: BTreeSet<usize> = vms.iter().map(|v| v.wave).collect();
    // A linear scan of the hosts per VM: 5,000 VMs x 50 hosts is 250,000 steps.
    for w in waves {
        let mut idx: Vec<usize> = (0..vms.len()).filter(|&i| vms[i].wave == w).collect();
        idx.sort_by(|&a, &b| {
            vms[b]
                .bytes
                .cmp(&vms[a].bytes)
                .then(vms[a].order.cmp(&vms[b].order))
        });
        let mut wave_load: BTreeMap<&str, (u64, usize)> = BTreeMap::new();
        for i in idx {
            let v = &vms[i];
            let keys = v.keys();
            let mut best: Option<(u64, usize, u64, usize, usize)> = None;
            for (hi, h) in hosts.iter().enumerate() {
                let mut cost = 0usize;
                let mut ok = true;
                for (k, need) in &keys {
                    match pool.cost(h, k, *need) {
                        Some(c) => cost += c,
                        None => ok = false,
                    }
                }
                if !ok {
                    continue;
                }
                // The least loaded in this wave (bytes, then VMs: sizes may be
                // unknown), then overall; on a tie the host that needs no more of the
                // budgets (the rest stays for the others).
                let (wb, wn) = wave_load.get(h.as_str()).copied().unwrap_or((0, 0));
                let cand = (wb, wn, loads.get(h).copied().unwrap_or(0), cost, hi);
                if best.is_none_or(|b| cand < b) {
                    best = Some(cand);
                }
            }
            let Some((.., hi)) = best else {
                return Err(fail(format!(
                    "VM {}: no conversion host can take it within the budgets ({})",
                    v.name,
                    keys.iter()
                        .map(|(k, n)| match k {
                            Key::Esxi(e) => format!(
                                "{n} disk(s) from ESXi host {e}, {} of its budget free",
                                pool.free(k)
                            ),
                            Key::Datastore(d) =>
                                format!("datastore {d}, {} of its VM limit free", pool.free(k)),
                        })
                        .collect::<Vec<_>>()
                        .join("; ")
                )));
            };
            let h = &hosts[hi];
            for (k, need) in &keys {
                pool.take(h, k, *need);
                if pool.total.contains_key(k) {
                    users.entry(k.clone()).or_default().insert(h.clone());
                }
            }
            let wl = wave_load.entry(h.as_str()).or_insert((0, 0));
            wl.0 += v.bytes;
            wl.1 += 1;
            *loads.entry(h.clone()).or_insert(0) += v.bytes;
            out.entry(h.clone()).or_default().push(i);
        }
    }
    pool.spread(&users);
    Ok(out)
}

/// Reads `OUTDIR/assignment.json` when there is one (the previous generation).
pub fn read_record(out_dir: &Path) -> Result<Option<Record>> {
    let p = out_dir.join(RECORD_FILE);
    let bytes = match v2k_untrusted::file::read_to_string(&p, MAX_RECORD_BYTES, "assignment record")
    {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(crate::io(format!("reading {}", p.display()))(e)),
    };
    let r: Record = serde_json::from_str(&bytes)
        .map_err(|e| fail(format!("{}: not an assignment record: {e}", p.display())))?;
    if r.schema_version != SCHEMA_VERSION {
        return Err(fail(format!(
            "{}: schema version {} (this v2k reads {SCHEMA_VERSION})",
            p.display(),
            r.schema_version
        )));
    }
    for n in r
        .hosts
        .iter()
        .map(|h| &h.name)
        .chain(r.shards.iter().map(|s| &s.id))
    {
        if !valid_name(n) {
            return Err(fail(format!("{}: {n:?} is not a plain name", p.display())));
        }
    }
    Ok(Some(r))
}

/// A record for 5,000 VMs is about 1.5 MB; far more is not a record v2k wrote.
const MAX_RECORD_BYTES: u64 = 64 << 20;

/// Writes the new shard plans and the record into `out_dir`, together (the record
/// last: it names only shards that exist). Existing shard files are never rewritten.
pub fn write(out_dir: &Path, a: &Assignment) -> Result<()> {
    v2k_outfile::create_dir(out_dir)?;
    let mut files = Vec::with_capacity(a.files.len() + 1);
    for (name, text) in &a.files {
        files.push(v2k_outfile::OutFile::staged(
            &out_dir.join(name),
            text.as_bytes(),
            false,
        )?);
    }
    let json = serde_json::to_vec_pretty(&a.record).map_err(|e| fail(e.to_string()))?;
    files.push(v2k_outfile::OutFile::staged(
        &out_dir.join(RECORD_FILE),
        &json,
        true,
    )?);
    v2k_outfile::commit_all(files)?;
    Ok(())
}

/// Splits `plan` (expanded, checked: `checks` is [`crate::check`]'s report, which must
/// have no problems) over `opts.hosts`, or reassigns `previous`.
pub fn assign(
    plan: &Plan,
    checks: &CheckReport,
    opts: &Options,
    previous: Option<&Record>,
) -> Result<Assignment> {
    if !checks.problems.is_empty() {
        return Err(Error::Plan(checks.problems.clone()));
    }
    // A VM that cannot be read has no known size and, from vSphere, no known ESXi
    // host: placing it anyway would split the budgets as if it drew on none (a
    // controller without the vCenter password did exactly that). Refuse, naming them.
    // (A VM read but refused for its critical concerns has its disks counted: it is
    // placed, and fails in its run with its reason, as a single host's wave does.)
    let unread: Vec<String> = checks
        .vms
        .iter()
        .filter(|c| c.disks == 0)
        .filter_map(|c| c.error.as_ref().map(|e| format!("VM {}: {e}", c.name)))
        .collect();
    if !unread.is_empty() {
        return Err(fail(format!(
            "cannot split the plan without reading every VM (its size and ESXi host): {}",
            unread.join("; ")
        )));
    }
    let mut seen = BTreeSet::new();
    for h in opts.hosts.iter().chain(&opts.exclude) {
        if !valid_name(h) {
            return Err(fail(format!(
                "conversion host {h:?}: use its inventory name (letters, digits, . _ -)"
            )));
        }
    }
    for h in &opts.hosts {
        if !seen.insert(h.as_str()) {
            return Err(fail(format!("conversion host {h} is named twice")));
        }
    }
    let by_name: BTreeMap<&str, &crate::check::VmCheck> =
        checks.vms.iter().map(|c| (c.name.as_str(), c)).collect();
    let mut loads = Vec::new();
    let mut vm_plans = Vec::new();
    let mut totals: BTreeMap<Key, usize> = BTreeMap::new();
    for (wi, w) in plan.waves.iter().enumerate() {
        for v in &w.vms {
            let c = by_name.get(v.name.as_str());
            let l = Load {
                wave: wi,
                order: loads.len(),
                name: v.name.clone(),
                bytes: c.map_or(0, |c| c.estimated_bytes),
                disks: c.map_or(1, |c| c.disks.max(1)),
                esxi_host: v
                    .esxi_host
                    .clone()
                    .or_else(|| c.and_then(|c| c.esxi_host.clone())),
                datastore: v.datastore.display().to_string(),
            };
            if let Some(e) = &l.esxi_host {
                let n = plan.limits.esxi_host(e);
                if n != usize::MAX {
                    totals.insert(Key::Esxi(e.clone()), n);
                }
            }
            let n = plan.limits.datastore(&v.datastore);
            if n != usize::MAX {
                totals.insert(Key::Datastore(l.datastore.clone()), n);
            }
            loads.push(l);
            vm_plans.push((w.name.clone(), v));
        }
    }
    let budgets = {
        let mut b = Budgets::default();
        for (k, n) in &totals {
            match k {
                Key::Esxi(e) => b.esxi_hosts.insert(e.clone(), *n),
                Key::Datastore(d) => b.datastores.insert(d.clone(), *n),
            };
        }
        b
    };
    let source = ShardSource::new(plan)?;
    let index: BTreeMap<&str, usize> = loads
        .iter()
        .enumerate()
        .map(|(i, l)| (l.name.as_str(), i))
        .collect();
    let shard_vm = |i: usize| {
        let l = &loads[i];
        ShardVm {
            wave: vm_plans[i].0.clone(),
            name: l.name.clone(),
            bytes: l.bytes,
            disks: l.disks,
            esxi_host: l.esxi_host.clone(),
            datastore: l.datastore.clone(),
        }
    };
    let make_shard = |host: &str,
                      generation: u32,
                      idx: &[usize],
                      shares: Budgets|
     -> Result<(Shard, (String, String))> {
        let id = if generation == 1 {
            host.to_string()
        } else {
            format!("{host}.g{generation}")
        };
        let mut idx = idx.to_vec();
        idx.sort_unstable();
        let vms: Vec<ShardEntry> = idx
            .iter()
            .map(|&i| ShardEntry {
                wave: &vm_plans[i].0,
                vm: vm_plans[i].1,
                esxi_host: loads[i].esxi_host.as_deref(),
            })
            .collect();
        let text = source.shard(&vms, host, &shares)?;
        let file = format!("{id}.yaml");
        Ok((
            Shard {
                id,
                host: host.to_string(),
                generation,
                plan: file.clone(),
                plan_hash: hex::encode(sha2::Sha256::digest(text.as_bytes())),
                withdrawn: false,
                shares,
                bytes: idx.iter().map(|&i| loads[i].bytes).sum(),
                vms: idx.iter().map(|&i| shard_vm(i)).collect(),
            },
            (file, text),
        ))
    };

    let Some(prev) = previous else {
        let excluded: BTreeSet<&str> = opts.exclude.iter().map(|s| s.as_str()).collect();
        let hosts: Vec<String> = opts
            .hosts
            .iter()
            .filter(|h| !excluded.contains(h.as_str()))
            .cloned()
            .collect();
        if hosts.is_empty() {
            return Err(fail("no conversion host to assign to"));
        }
        let mut pool = Pool {
            total: totals,
            held: BTreeMap::new(),
        };
        let placed = place(&loads, &hosts, &mut pool, &mut BTreeMap::new())?;
        let mut shards = Vec::new();
        let mut files = Vec::new();
        for h in &hosts {
            if let Some(idx) = placed.get(h) {
                let (s, f) = make_shard(h, 1, idx, pool.shares(h))?;
                shards.push(s);
                files.push(f);
            }
        }
        let record = Record {
            schema_version: SCHEMA_VERSION,
            plan: plan.path.clone(),
            plan_hash: plan.hash.clone(),
            generation: 1,
            budgets,
            hosts: opts
                .hosts
                .iter()
                .map(|h| HostRecord {
                    name: h.clone(),
                    excluded: excluded.contains(h.as_str()),
                    shares: pool.shares(h),
                })
                .collect(),
            shards,
            moved: Vec::new(),
        };
        return Ok(Assignment { record, files });
    };

    // ---- reassignment -------------------------------------------------------
    if prev.plan_hash != plan.hash {
        return Err(fail(format!(
            "the plan changed since the assignment in {RECORD_FILE} (a reassignment splits the same plan; assign the new plan into another directory)"
        )));
    }
    let generation = prev.generation + 1;
    let newly_excluded: BTreeSet<&str> = opts.exclude.iter().map(|s| s.as_str()).collect();
    let named: BTreeSet<&str> = opts.hosts.iter().map(|s| s.as_str()).collect();
    for h in prev.hosts.iter().filter(|h| !h.excluded) {
        if !named.contains(h.name.as_str()) && !newly_excluded.contains(h.name.as_str()) {
            return Err(fail(format!(
                "conversion host {} holds shards of this assignment: name it in --hosts, or in --exclude when it is lost",
                h.name
            )));
        }
    }
    let was_excluded: BTreeSet<&str> = prev
        .hosts
        .iter()
        .filter(|h| h.excluded)
        .map(|h| h.name.as_str())
        .collect();
    let is_out = |h: &str| newly_excluded.contains(h) || was_excluded.contains(h);
    // What each shard's journal shows migrated.
    let mut migrated: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for dir in &opts.journals {
        let records = crate::journal::read(dir)?;
        let hash = records.iter().find_map(|r| match &r.entry {
            Entry::RunStarted { plan_hash, .. } => Some(plan_hash.clone()),
            _ => None,
        });
        let Some(shard) = hash.and_then(|h| prev.shards.iter().find(|s| s.plan_hash == h)) else {
            return Err(fail(format!(
                "{}: not the run of a shard of this assignment (no journal, or one of another plan)",
                dir.display()
            )));
        };
        let done = migrated.entry(shard.id.clone()).or_default();
        for r in &records {
            match &r.entry {
                Entry::VmFinished { vm, status, .. } => {
                    if *status == VmStatus::Migrated {
                        done.insert(vm.clone());
                    } else {
                        done.remove(vm);
                    }
                }
                Entry::VmVerified { vm, .. } => {
                    done.insert(vm.clone());
                }
                _ => {}
            }
        }
    }
    let mut hosts: Vec<String> = Vec::new();
    for h in prev.hosts.iter().map(|h| &h.name).chain(&opts.hosts) {
        if !is_out(h) && !hosts.contains(h) {
            hosts.push(h.clone());
        }
    }
    if hosts.is_empty() {
        return Err(fail("no conversion host left to assign to"));
    }
    let mut pool = Pool {
        total: totals,
        held: prev
            .hosts
            .iter()
            .filter(|h| !is_out(&h.name))
            .map(|h| {
                let mut m = BTreeMap::new();
                for (e, n) in &h.shares.esxi_hosts {
                    m.insert(Key::Esxi(e.clone()), *n);
                }
                for (d, n) in &h.shares.datastores {
                    m.insert(Key::Datastore(d.clone()), *n);
                }
                (h.name.clone(), m)
            })
            .collect(),
    };
    let mut shards = prev.shards.clone();
    let mut to_move: Vec<(usize, String)> = Vec::new();
    let mut host_loads: BTreeMap<String, u64> = BTreeMap::new();
    for s in shards.iter_mut() {
        let done = migrated.get(&s.id);
        let open = s
            .vms
            .iter()
            .filter(|v| done.is_none_or(|d| !d.contains(&v.name)));
        if s.withdrawn {
            continue;
        }
        if is_out(&s.host) {
            s.withdrawn = true;
            for v in open {
                let i = *index.get(v.name.as_str()).ok_or_else(|| {
                    fail(format!("{RECORD_FILE}: VM {} is not in the plan", v.name))
                })?;
                to_move.push((i, s.id.clone()));
            }
        } else {
            *host_loads.entry(s.host.clone()).or_insert(0) += open.map(|v| v.bytes).sum::<u64>();
        }
    }
    let joined = opts
        .hosts
        .iter()
        .any(|h| !prev.hosts.iter().any(|p| &p.name == h));
    if to_move.is_empty() && newly_excluded.iter().all(|h| was_excluded.contains(h)) && !joined {
        // Nothing lost, nothing to move: the same assignment (a rerun resumes it).
        return Ok(Assignment {
            record: prev.clone(),
            files: Vec::new(),
        });
    }
    let moving: Vec<Load> = to_move.iter().map(|(i, _)| loads[*i].clone()).collect();
    let placed = place(&moving, &hosts, &mut pool, &mut host_loads)?;
    let mut files = Vec::new();
    let mut moved = prev.moved.clone();
    for h in &hosts {
        if let Some(idx) = placed.get(h) {
            let idx: Vec<usize> = idx.iter().map(|&j| to_move[j].0).collect();
            let (s, f) = make_shard(h, generation, &idx, pool.shares(h))?;
            for &j in placed[h].iter() {
                moved.push(Moved {
                    vm: loads[to_move[j].0].name.clone(),
                    from: to_move[j].1.clone(),
                    to: s.id.clone(),
                    generation,
                });
            }
            shards.push(s);
            files.push(f);
        }
    }
    let mut all_hosts: Vec<String> = prev.hosts.iter().map(|h| h.name.clone()).collect();
    for h in &opts.hosts {
        if !all_hosts.contains(h) {
            all_hosts.push(h.clone());
        }
    }
    let record = Record {
        schema_version: SCHEMA_VERSION,
        plan: plan.path.clone(),
        plan_hash: plan.hash.clone(),
        generation,
        budgets,
        hosts: all_hosts
            .iter()
            .map(|h| HostRecord {
                name: h.clone(),
                excluded: is_out(h),
                shares: if is_out(h) {
                    Budgets::default()
                } else {
                    pool.shares(h)
                },
            })
            .collect(),
        shards,
        moved,
    };
    Ok(Assignment { record, files })
}

/// A VM of a shard: its wave, its resolved plan and its ESXi host.
struct ShardEntry<'a> {
    wave: &'a str,
    vm: &'a crate::plan::VmPlan,
    esxi_host: Option<&'a str>,
}

/// The plan as written, from which shard plans are cut: the same settings, the
/// shard's VMs, its shares, paths made absolute (a shard lives in another directory).
struct ShardSource {
    /// The plan's top level without its waves.
    root: Mapping,
    /// Each wave's mapping without its VMs.
    waves: Vec<Value>,
    /// Every VM entry of every wave, in order (`VmPlan::entry` indexes it).
    entries: Vec<Value>,
    base: PathBuf,
}

fn key(s: &str) -> Value {
    Value::String(s.into())
}

impl ShardSource {
    fn new(plan: &Plan) -> Result<ShardSource> {
        let root: Value = serde_norway::from_str(&plan.text)
            .map_err(|e| fail(format!("{}: {e}", plan.path.display())))?;
        let Value::Mapping(mut root) = root else {
            return Err(fail(format!("{}: not a mapping", plan.path.display())));
        };
        let mut entries = Vec::new();
        let mut waves = Vec::new();
        if let Some(Value::Sequence(ws)) = root.remove(key("waves")) {
            for mut w in ws {
                if let Some(Value::Sequence(vms)) =
                    w.as_mapping_mut().and_then(|m| m.remove(key("vms")))
                {
                    entries.extend(vms);
                }
                waves.push(w);
            }
        }
        Ok(ShardSource {
            root,
            waves,
            entries,
            base: plan.path.parent().unwrap_or(Path::new("/")).to_path_buf(),
        })
    }

    /// A path value made absolute against the plan's directory (a `vsphere://`
    /// address is left alone).
    fn abs(&self, v: &mut Value) {
        if let Value::String(s) = v {
            if !s.starts_with('/') && !Address::is_vsphere(s) {
                *s = self.base.join(&*s).display().to_string();
            }
        }
    }

    /// Absolute paths in a `Settings` or VM mapping: `virtio-win`, `baseline-dir`, and
    /// hook programs given by a relative path (a bare name is looked up in PATH, as it
    /// was).
    fn abs_settings(&self, m: &mut Value) {
        for k in ["virtio-win", "baseline-dir"] {
            if let Some(v) = m.get_mut(k) {
                self.abs(v);
            }
        }
        for which in ["pre", "post"] {
            if let Some(Value::Sequence(cmd)) = m
                .get_mut("hooks")
                .and_then(|h| h.get_mut(which))
                .and_then(|h| h.get_mut("command"))
            {
                if let Some(first @ Value::String(_)) = cmd.first_mut() {
                    if first.as_str().is_some_and(|s| s.contains('/')) {
                        self.abs(first);
                    }
                }
            }
        }
    }

    fn shard(&self, vms: &[ShardEntry], host: &str, shares: &Budgets) -> Result<String> {
        let mut root = self.root.clone();
        // The shard's run directory: `ID.run` beside the shard plan, on its host.
        root.remove(key("run-dir"));
        root.insert(key("conversion-host"), key(host));
        if let Some(Value::Sequence(st)) = root.get_mut(key("storage")) {
            for s in st {
                for k in ["source", "output"] {
                    if let Some(v) = s.get_mut(k) {
                        self.abs(v);
                    }
                }
            }
        }
        if let Some(Value::Mapping(servers)) = root.get_mut(key("vsphere")) {
            for (_, s) in servers.iter_mut() {
                for k in ["password-file", "ca-file"] {
                    if let Some(v) = s.get_mut(k) {
                        self.abs(v);
                    }
                }
            }
        }
        if let Some(d) = root.get_mut(key("defaults")) {
            self.abs_settings(d);
        }
        let limits = root
            .entry(key("limits"))
            .or_insert_with(|| Value::Mapping(Mapping::new()));
        if let Value::Mapping(l) = limits {
            let map = |m: &BTreeMap<String, usize>| {
                Value::Mapping(
                    m.iter()
                        .map(|(k, v)| (key(k), Value::Number((*v as u64).into())))
                        .collect(),
                )
            };
            l.remove(key("esxi-hosts"));
            l.remove(key("datastores"));
            if !shares.esxi_hosts.is_empty() {
                l.insert(key("esxi-hosts"), map(&shares.esxi_hosts));
            }
            if !shares.datastores.is_empty() {
                l.insert(key("datastores"), map(&shares.datastores));
            }
        }
        let mut waves = Vec::new();
        for w in &self.waves {
            let name = w.get("name").and_then(|n| n.as_str()).unwrap_or_default();
            let mut list = Vec::new();
            for ShardEntry {
                wave,
                vm: v,
                esxi_host,
            } in vms
            {
                if *wave != name {
                    continue;
                }
                let mut entry = self
                    .entries
                    .get(v.entry)
                    .cloned()
                    .ok_or_else(|| fail(format!("VM {}: its plan entry is missing", v.name)))?;
                if let Value::Mapping(m) = &mut entry {
                    m.insert(key("name"), key(&v.name));
                    // A pattern entry's VMs each get their own address.
                    let pattern = m
                        .get(key("source"))
                        .and_then(|s| s.as_str())
                        .and_then(|s| Address::parse(s).ok())
                        .is_some_and(|a| a.is_pattern());
                    if let Some(r) = v.vsphere.as_ref().filter(|_| pattern) {
                        m.insert(key("source"), key(&r.address.to_string()));
                    }
                    if let Some(e) = esxi_host {
                        m.insert(key("esxi-host"), key(e));
                    }
                }
                if let Some(s) = entry.get_mut("source") {
                    self.abs(s);
                }
                self.abs_settings(&mut entry);
                list.push(entry);
            }
            if list.is_empty() {
                continue;
            }
            let mut w = w.clone();
            if let Some(m) = w.as_mapping_mut() {
                m.insert(key("vms"), Value::Sequence(list));
            }
            waves.push(w);
        }
        root.insert(key("waves"), Value::Sequence(waves));
        let body =
            serde_norway::to_string(&Value::Mapping(root)).map_err(|e| fail(e.to_string()))?;
        Ok(format!(
            "# A shard of a wave plan for conversion host {host}, written by `v2k wave assign`\n\
             # (docs/scale-out.md). Run it with `v2k wave run`; do not edit it (its hash\n\
             # names its run).\n{body}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::VmCheck;
    use crate::journal::{Entry, Journal};

    /// A plan of `waves` waves of `per_wave` VMs (names `wW-vN`); VM `i` has `i % 3 + 1`
    /// disks on ESXi host `esx{i % 2}` and `(i + 1) GiB` to copy.
    fn setup(text_extra: &str, waves: usize, per_wave: usize) -> (Plan, CheckReport) {
        let mut t = format!(
            "version: 1\nrun-dir: /somewhere/run\n{text_extra}defaults:\n  validate: false\n  baseline-dir: baselines\n  hooks:\n    pre: {{ command: [hooks/pre.sh] }}\nwaves:\n"
        );
        for w in 0..waves {
            t.push_str(&format!("  - name: w{w}\n    vms:\n"));
            for v in 0..per_wave {
                t.push_str(&format!("      - source: vms/w{w}-v{v}.vmx\n"));
            }
        }
        let plan = crate::plan::parse(&t, Path::new("/plans/p.yaml")).unwrap();
        let mut vms = Vec::new();
        let mut i = 0u64;
        for w in &plan.waves {
            for v in &w.vms {
                vms.push(VmCheck {
                    wave: w.name.clone(),
                    name: v.name.clone(),
                    source: v.source.clone(),
                    out: v.out.clone(),
                    disks: (i % 3 + 1) as usize,
                    estimated_bytes: (i + 1) << 30,
                    esxi_host: Some(format!("esx{}", i % 2)),
                    concerns: Vec::new(),
                    unmapped_networks: Vec::new(),
                    error: None,
                    live: false,
                    baseline: None,
                });
                i += 1;
            }
        }
        (
            plan,
            CheckReport {
                problems: Vec::new(),
                vms,
            },
        )
    }

    fn hosts(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("conv{i}")).collect()
    }

    fn opts(n: usize) -> Options {
        Options {
            hosts: hosts(n),
            ..Options::default()
        }
    }

    /// Every live shard's share of each ESXi host added up: within the budget, and
    /// each shard's share covers its largest VM there.
    fn assert_within_budgets(r: &Record) {
        for (e, budget) in &r.budgets.esxi_hosts {
            let held: usize = r
                .hosts
                .iter()
                .filter(|h| !h.excluded)
                .filter_map(|h| h.shares.esxi_hosts.get(e))
                .sum();
            assert!(held <= *budget, "{e}: {held} > {budget}: {r:#?}");
        }
        for s in r.shards.iter().filter(|s| !s.withdrawn) {
            for v in &s.vms {
                let e = v.esxi_host.as_ref().unwrap();
                let share = s.shares.esxi_hosts[e];
                assert!(
                    share >= v.disks,
                    "{}: share {share} < {} disks",
                    v.name,
                    v.disks
                );
                // A host's current share is at least what each of its shards holds.
                let now = r.hosts.iter().find(|h| h.name == s.host).unwrap();
                assert!(now.shares.esxi_hosts[e] >= share);
            }
        }
    }

    #[test]
    fn splits_by_bytes_within_the_esxi_budget_into_runnable_shards() {
        let (plan, checks) = setup("limits:\n  vms: 4\n  esxi-host-disks: 7\n", 2, 30);
        let a = assign(&plan, &checks, &opts(3), None).unwrap();
        let r = &a.record;
        assert_eq!(r.generation, 1);
        assert_eq!(r.budgets.esxi_hosts.len(), 2);
        assert_eq!(r.shards.len(), 3);
        assert_within_budgets(r);
        // Every VM exactly once.
        let mut names: Vec<&str> = r
            .shards
            .iter()
            .flat_map(|s| &s.vms)
            .map(|v| v.name.as_str())
            .collect();
        names.sort();
        let before = names.len();
        names.dedup();
        assert_eq!((before, names.len()), (60, 60));
        // Balanced per wave: no host more than the largest VM above the lightest.
        for w in ["w0", "w1"] {
            let per: Vec<u64> = r
                .shards
                .iter()
                .map(|s| s.vms.iter().filter(|v| v.wave == w).map(|v| v.bytes).sum())
                .collect();
            let (lo, hi) = (per.iter().min().unwrap(), per.iter().max().unwrap());
            assert!(hi - lo <= 60 << 30, "{w}: {per:?}");
        }
        // The shards are plans `wave run` reads: their VMs, the shares, the host,
        // absolute paths, the waves in order.
        for (s, (file, text)) in r.shards.iter().zip(&a.files) {
            assert_eq!(file, &s.plan);
            assert_eq!(
                hex::encode(sha2::Sha256::digest(text.as_bytes())),
                s.plan_hash
            );
            let p = crate::plan::parse(text, &Path::new("/shards").join(file)).unwrap();
            assert_eq!(p.conversion_host.as_deref(), Some(s.host.as_str()));
            assert_eq!(
                p.run_dir,
                Path::new("/shards").join(format!("{}.run", s.id))
            );
            assert_eq!(p.limits.vms, 4);
            let vms: Vec<&str> = p
                .waves
                .iter()
                .flat_map(|w| &w.vms)
                .map(|v| v.name.as_str())
                .collect();
            let want: Vec<&str> = s.vms.iter().map(|v| v.name.as_str()).collect();
            assert_eq!(vms, want);
            assert_eq!(
                p.waves.iter().map(|w| w.name.as_str()).collect::<Vec<_>>(),
                ["w0", "w1"]
            );
            for v in p.waves.iter().flat_map(|w| &w.vms) {
                assert!(v.source.starts_with("/plans/vms"), "{:?}", v.source);
                assert_eq!(v.pre.as_ref().unwrap().command[0], "/plans/hooks/pre.sh");
                // The shard lives elsewhere: its baselines are the plan's, by absolute path.
                assert_eq!(
                    v.baseline_dir.as_deref(),
                    Some(Path::new("/plans/baselines"))
                );
                let e = v.esxi_host.as_ref().unwrap();
                assert_eq!(p.limits.esxi_host(e), s.shares.esxi_hosts[e]);
            }
        }
    }

    #[test]
    fn a_budget_of_two_over_three_hosts_uses_two_hosts_per_esxi_host() {
        // The e2e test's shape: single-disk VMs, budget 2 per ESXi host.
        let (plan, mut checks) = setup("limits:\n  esxi-host-disks: 2\n", 1, 6);
        for c in &mut checks.vms {
            c.disks = 1;
        }
        let a = assign(&plan, &checks, &opts(3), None).unwrap();
        assert_within_budgets(&a.record);
        for e in ["esx0", "esx1"] {
            let n = a
                .record
                .shards
                .iter()
                .filter(|s| s.shares.esxi_hosts.contains_key(e))
                .count();
            assert_eq!(n, 2, "{e}: {:#?}", a.record);
        }
    }

    #[test]
    fn datastore_limits_are_split_between_the_hosts() {
        let (plan, checks) = setup("limits:\n  per-datastore: 2\n", 1, 3);
        let a = assign(&plan, &checks, &opts(5), None).unwrap();
        // Three VMs of one datastore limited to 2 at once: on at most 2 hosts.
        assert!(a.record.shards.len() <= 2, "{:#?}", a.record);
        let held: usize = a
            .record
            .shards
            .iter()
            .map(|s| s.shares.datastores["/plans/vms"])
            .sum();
        assert!(held <= 2);
        for (_, text) in &a.files {
            let p = crate::plan::parse(text, Path::new("/s/x.yaml")).unwrap();
            assert!(p.limits.datastore(Path::new("/plans/vms")) >= 1);
        }
    }

    #[test]
    fn a_shard_leaves_out_the_waves_it_has_no_vm_of() {
        // Two waves of one VM each over two hosts: each host gets one wave, and a
        // plan with an empty wave would not load.
        let (plan, checks) = setup("", 2, 1);
        let a = assign(&plan, &checks, &opts(2), None).unwrap();
        let waves: Vec<Vec<String>> = a
            .files
            .iter()
            .map(|(_, t)| {
                let p = crate::plan::parse(t, Path::new("/s/x.yaml")).unwrap();
                p.waves.iter().map(|w| w.name.clone()).collect()
            })
            .collect();
        assert_eq!(waves, [vec!["w0".to_string()], vec!["w1".to_string()]]);
    }

    #[test]
    fn a_vm_with_more_disks_than_its_budget_is_refused_by_name() {
        let (plan, checks) = setup("limits:\n  esxi-host-disks: 2\n", 1, 3);
        // VM 2 has 3 disks.
        let e = assign(&plan, &checks, &opts(2), None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("w0-v2") && e.contains("3 disk(s) from ESXi host esx0"),
            "{e}"
        );
    }

    #[test]
    fn a_vm_that_could_not_be_read_is_refused_not_placed_blind() {
        let (plan, mut checks) = setup("limits:\n  esxi-host-disks: 2\n", 1, 3);
        checks.vms[1].error = Some("cannot be read: vCenter refused the login".into());
        checks.vms[1].esxi_host = None;
        checks.vms[1].disks = 0;
        // A VM read but with a critical concern is placed (it fails in its run).
        checks.vms[2].error = Some("critical pre-flight concerns: disk-missing".into());
        let e = assign(&plan, &checks, &opts(2), None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("VM w0-v1: cannot be read: vCenter refused the login")
                && !e.contains("w0-v2"),
            "{e}"
        );
    }

    #[test]
    fn bad_or_repeated_host_names_are_refused() {
        let (plan, checks) = setup("", 1, 2);
        let mut o = opts(2);
        o.hosts.push("conv0".into());
        assert!(assign(&plan, &checks, &o, None)
            .unwrap_err()
            .to_string()
            .contains("twice"));
        o.hosts = vec!["../x".into()];
        assert!(assign(&plan, &checks, &o, None).is_err());
    }

    /// A journal of shard `s` in which `done` migrated, `failed` failed.
    fn journal(dir: &Path, s: &Shard, done: &[&str], failed: &[&str]) {
        let (j, _) = Journal::open(dir).unwrap();
        j.append(Entry::RunStarted {
            schema_version: 1,
            plan: s.plan.clone().into(),
            plan_hash: s.plan_hash.clone(),
            waves: Vec::new(),
            conversion_host: Some(s.host.clone()),
            rollback_window_seconds: None,
        })
        .unwrap();
        for (vm, st) in done
            .iter()
            .map(|v| (v, VmStatus::Migrated))
            .chain(failed.iter().map(|v| (v, VmStatus::Failed)))
        {
            j.append(Entry::VmFinished {
                wave: "w0".into(),
                vm: vm.to_string(),
                status: st,
                result: None,
                reason: None,
                seconds: 1.0,
                migrate_seconds: 1.0,
                bytes: 0,
                report: None,
            })
            .unwrap();
        }
    }

    #[test]
    fn reassigning_a_lost_host_moves_only_its_unfinished_vms() {
        let (plan, mut checks) = setup("limits:\n  esxi-host-disks: 3\n", 1, 12);
        for c in &mut checks.vms {
            c.disks = 1;
        }
        let first = assign(&plan, &checks, &opts(3), None).unwrap();
        let lost = first
            .record
            .shards
            .iter()
            .find(|s| s.host == "conv2")
            .unwrap()
            .clone();
        let kept = first
            .record
            .shards
            .iter()
            .find(|s| s.host == "conv0")
            .unwrap()
            .clone();
        let d = tempfile::tempdir().unwrap();
        let (jl, jk) = (d.path().join("lost"), d.path().join("kept"));
        let lost_names: Vec<&str> = lost.vms.iter().map(|v| v.name.as_str()).collect();
        // The lost host finished its first VM and failed its second.
        journal(&jl, &lost, &lost_names[..1], &lost_names[1..2]);
        journal(&jk, &kept, &[kept.vms[0].name.as_str()], &[]);
        let o = Options {
            hosts: hosts(2),
            exclude: vec!["conv2".into()],
            journals: vec![jl, jk],
        };
        let second = assign(&plan, &checks, &o, Some(&first.record)).unwrap();
        let r = &second.record;
        assert_eq!(r.generation, 2);
        assert!(r.hosts.iter().find(|h| h.name == "conv2").unwrap().excluded);
        assert!(r.shards.iter().find(|s| s.id == "conv2").unwrap().withdrawn);
        // Only the lost host's unfinished VMs moved, each once, to new shards.
        let mut moved: Vec<&str> = r.moved.iter().map(|m| m.vm.as_str()).collect();
        moved.sort();
        let mut want: Vec<&str> = lost_names[1..].to_vec();
        want.sort();
        assert_eq!(moved, want);
        assert!(r
            .moved
            .iter()
            .all(|m| m.from == "conv2" && m.to.ends_with(".g2")));
        let new: Vec<&Shard> = r.shards.iter().filter(|s| s.generation == 2).collect();
        assert!(!new.is_empty());
        assert_eq!(new.len(), second.files.len());
        // The first generation's shards are unchanged (their runs resume as they are).
        for s in &first.record.shards {
            let now = r.shards.iter().find(|x| x.id == s.id).unwrap();
            assert_eq!(now.plan_hash, s.plan_hash);
        }
        assert_within_budgets(r);
        // A reassignment of a changed plan is refused.
        let mut other = plan.clone();
        other.hash = "0".repeat(64);
        assert!(assign(&other, &checks, &o, Some(&first.record)).is_err());
        // Every host present and nothing lost: the same assignment, nothing written.
        let same = Options {
            hosts: hosts(3),
            ..Options::default()
        };
        let again = assign(&plan, &checks, &same, Some(&first.record)).unwrap();
        assert_eq!(again.record, first.record);
        assert!(again.files.is_empty());
        // A host that holds shards must be named.
        let o2 = Options {
            hosts: vec!["conv0".into()],
            exclude: vec!["conv2".into()],
            journals: Vec::new(),
        };
        let e = assign(&plan, &checks, &o2, Some(&first.record))
            .unwrap_err()
            .to_string();
        assert!(e.contains("conv1"), "{e}");
    }

    #[test]
    fn pattern_entries_become_one_entry_per_vm_with_its_address() {
        let text = "version: 1\nwaves:\n  - name: w\n    vms:\n      - source: vsphere://u@vc.example/DC/vm/web*\n";
        let mut plan = crate::plan::parse(text, Path::new("/p/p.yaml")).unwrap();
        // What `expand` makes of it: two VMs from entry 0.
        let t = plan.waves[0].vms[0].clone();
        let one = |n: &str| {
            let mut v = t.clone();
            v.name = n.into();
            let mut r = v.vsphere.clone().unwrap();
            r.address.inventory_path = format!("DC/vm/{n}");
            v.source = PathBuf::from(r.address.display_without_user());
            v.vsphere = Some(r);
            v.out = PathBuf::from(format!("/p/p.run/vms/{n}/out"));
            v
        };
        plan.waves[0].vms = vec![one("web1"), one("web2")];
        let checks = CheckReport {
            problems: Vec::new(),
            vms: ["web1", "web2"]
                .iter()
                .map(|n| VmCheck {
                    wave: "w".into(),
                    name: n.to_string(),
                    source: PathBuf::new(),
                    out: PathBuf::new(),
                    disks: 1,
                    estimated_bytes: 1,
                    esxi_host: Some("esx-a".into()),
                    concerns: Vec::new(),
                    unmapped_networks: Vec::new(),
                    error: None,
                    live: false,
                    baseline: None,
                })
                .collect(),
        };
        let a = assign(&plan, &checks, &opts(1), None).unwrap();
        let p = crate::plan::parse(&a.files[0].1, Path::new("/s/conv0.yaml")).unwrap();
        let got: Vec<(String, String)> = p.waves[0]
            .vms
            .iter()
            .map(|v| {
                (
                    v.name.clone(),
                    v.vsphere.as_ref().unwrap().address.inventory_path.clone(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("web1".into(), "DC/vm/web1".into()),
                ("web2".into(), "DC/vm/web2".into())
            ]
        );
        assert_eq!(p.waves[0].vms[0].esxi_host.as_deref(), Some("esx-a"));
    }
}
