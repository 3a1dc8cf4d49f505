//! VMware's placement and resource tuning ([`v2k_inventory::model::Tuning`]) carried
//! onto the destination host ([`HostTopology`]): the one place the rule lives.
//!
//! | VMware | KVM (libvirt) |
//! |---|---|
//! | `sched.cpu.affinity` | `<cputune><vcpupin>` for every vCPU, on the host's CPUs |
//! | `numa.nodeAffinity` | `<numatune><memory mode='strict'>` and the vCPUs on those nodes' CPUs |
//! | `numa.vcpu.maxPerVirtualNode` | `<cpu><numa>` cells |
//! | `cpuid.coresPerSocket` | `<cpu><topology>` |
//! | all memory reserved (`sched.mem.min` = `memsize`, `sched.mem.pin`) | `<memoryBacking><hugepages/><locked/>` when the host has the pages |
//! | `vcpu.hotadd` | `<vcpu current='N'>MAX</vcpu>` |
//! | `mem.hotadd` | `<maxMemory slots='16'>` (and the one NUMA cell libvirt asks for) |
//!
//! Host CPU and node numbers are the ESXi host's: kept when the destination has them
//! all, renumbered onto as many of its own when it does not, refused with a
//! `tuning-host-too-small` concern when it has fewer. A full reservation without
//! hugepages on the destination is a `hugepages-unavailable` concern naming the
//! sysctl. Each mapping is recorded ([`TuningMapping`]) for the report's hardware
//! table.

use serde::{Deserialize, Serialize};
use v2k_inventory::model::{Concern, Vm};
use v2k_inventory::preflight::concern;

use crate::host::HostTopology;

/// Memory slots for hot-added DIMMs: libvirt's documented example, well under
/// QEMU's limit of 256 and KVM's memory-slot budget.
pub const MEMORY_SLOTS: u32 = 16;

/// Hot-add headroom is given in whole memory blocks of Linux's usual 128 MiB, the
/// unit a guest onlines hot-added memory in.
const MEMORY_BLOCK_MIB: u64 = 128;

/// The page size v2k asks a host to reserve when it has none (x86-64's 2 MiB).
const DEFAULT_HUGEPAGE_KIB: u64 = 2048;

/// One guest NUMA cell: vCPUs `first..=last` and its memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct GuestCell {
    pub first_cpu: u32,
    pub last_cpu: u32,
    pub memory_mib: u64,
}

/// One VMware setting and what became of it on KVM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct TuningMapping {
    /// What it is (`CPU affinity`).
    pub setting: String,
    /// The VMware side (`sched.cpu.affinity = 0-3,6`).
    pub vmware: String,
    /// The KVM side (`<vcpupin> … cpuset='0-3,6'`), or why it is not carried.
    pub kvm: String,
    pub carried: bool,
}

/// The tuning the target applies; empty when the VM had none.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct KvmTuning {
    /// CPU hot-add: the most vCPUs (`Target::vcpus` are present at boot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_vcpus: Option<u32>,
    /// Host CPUs every vCPU may run on (`<vcpupin>`); empty: anywhere.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vcpu_cpuset: Vec<u32>,
    /// Host NUMA nodes the memory is bound to (`<numatune>` strict); empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub memory_nodes: Vec<u32>,
    /// Guest NUMA cells (`<cpu><numa>`); empty: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub guest_cells: Vec<GuestCell>,
    /// Memory on hugepages of this size (KiB), locked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hugepage_kib: Option<u64>,
    /// Memory hot-add: the most memory, in MiB ([`MEMORY_SLOTS`] slots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_memory_mib: Option<u64>,
    /// Every VMware setting and its KVM answer, for the report.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mappings: Vec<TuningMapping>,
}

impl KvmTuning {
    pub fn is_empty(&self) -> bool {
        *self == KvmTuning::default()
    }

    /// The vCPUs the machine is built for: the hot-add maximum, else `vcpus`.
    pub fn max_vcpus_or(&self, vcpus: u32) -> u32 {
        self.max_vcpus.unwrap_or(vcpus).max(vcpus)
    }

    /// Without what binds the VM to the destination's hardware (pinning, NUMA
    /// binding, hugepages): for a validation boot on the conversion host. What the
    /// guest sees (hot-add, vNUMA cells) stays.
    pub fn without_host_placement(&self) -> KvmTuning {
        KvmTuning {
            vcpu_cpuset: Vec::new(),
            memory_nodes: Vec::new(),
            hugepage_kib: None,
            ..self.clone()
        }
    }
}

/// `0-3,6`: a CPU or node list as libvirt and the kernel write it.
pub fn cpuset(v: &[u32]) -> String {
    let mut s = String::new();
    let mut i = 0;
    while i < v.len() {
        let mut j = i;
        while j + 1 < v.len() && v[j + 1] == v[j] + 1 {
            j += 1;
        }
        if !s.is_empty() {
            s.push(',');
        }
        if j == i {
            s.push_str(&v[i].to_string());
        } else {
            s.push_str(&format!("{}-{}", v[i], v[j]));
        }
        i = j + 1;
    }
    s
}

/// `wanted` (the ESXi host's numbers) onto `available` (the destination's, in the
/// order to take them): the same numbers when the destination has them all, else
/// the first `wanted.len()` available, else `Err(available.len())`.
pub(crate) fn map_onto(wanted: &[u32], available: &[u32]) -> Result<(Vec<u32>, bool), usize> {
    if wanted.iter().all(|w| available.contains(w)) {
        return Ok((wanted.to_vec(), false));
    }
    if available.len() < wanted.len() {
        return Err(available.len());
    }
    let mut v = available[..wanted.len()].to_vec();
    v.sort_unstable();
    Ok((v, true))
}

/// What [`plan`] decided: the tuning, the sockets of the topology, the concerns.
pub(crate) struct Planned {
    pub tuning: KvmTuning,
    pub sockets: u32,
    pub concerns: Vec<Concern>,
}

/// Maps `vm`'s tuning onto `host`, for a machine of `vcpus` vCPUs in sockets of
/// `cores` cores (`cores` divides `vcpus`) and `memory_mib` of memory.
pub(crate) fn plan(
    vm: &Vm,
    vcpus: u32,
    cores: u32,
    memory_mib: u64,
    host: &HostTopology,
) -> Planned {
    let src = &vm.tuning;
    let mut t = KvmTuning::default();
    let mut concerns = Vec::new();
    let mut mappings = Vec::new();
    let mut map = |setting: &str, vmware: String, kvm: String, carried: bool| {
        mappings.push(TuningMapping {
            setting: setting.into(),
            vmware,
            kvm,
            carried,
        })
    };
    let host_cpus = host.cpus();
    let too_small = |subject: &str, message: String| {
        concern("tuning-host-too-small", Some(subject.into()), message)
    };

    // CPU hot-add: headroom up to the host's CPU count, in whole sockets.
    let mut max_vcpus = vcpus;
    if src.cpu_hot_add {
        let n = u32::try_from(host_cpus.len())
            .unwrap_or(u32::MAX)
            .min(v2k_inventory::preflight::MAX_VCPUS);
        let max = n / cores * cores;
        if max > vcpus {
            max_vcpus = max;
            t.max_vcpus = Some(max);
            map(
                "CPU hot-add",
                "vcpu.hotadd = TRUE".into(),
                format!("<vcpu current='{vcpus}'>{max}</vcpu>: up to the host's {n} CPUs"),
                true,
            );
        } else {
            let why =
                format!("the destination has {n} CPU(s): no room to add any to {vcpus} vCPU(s)");
            map(
                "CPU hot-add",
                "vcpu.hotadd = TRUE".into(),
                format!("not carried: {why}"),
                false,
            );
            concerns.push(too_small(
                "vcpu.hotadd",
                format!("CPU hot-add not carried: {why}"),
            ));
        }
    }
    let sockets = max_vcpus / cores;
    if vm.cpu.cores_per_socket > 1 {
        let kvm = format!("<topology sockets='{sockets}' cores='{cores}' threads='1'/>");
        if cores == vm.cpu.cores_per_socket {
            map(
                "Cores per socket",
                format!("cpuid.coresPerSocket = {cores}"),
                kvm,
                true,
            );
        } else {
            map(
                "Cores per socket",
                format!("cpuid.coresPerSocket = {}", vm.cpu.cores_per_socket),
                format!(
                    "{kvm}: {} does not divide {vcpus} vCPUs, so one core per socket",
                    vm.cpu.cores_per_socket
                ),
                false,
            );
        }
    }

    // NUMA node affinity: memory bound to the nodes, vCPUs kept on their CPUs.
    let mut node_cpus: Vec<u32> = Vec::new();
    if !src.numa_node_affinity.is_empty() {
        let vmware = format!("numa.nodeAffinity = {}", cpuset(&src.numa_node_affinity));
        match map_onto(&src.numa_node_affinity, &host.node_ids()) {
            Ok((nodes, renumbered)) => {
                for c in host.cells.iter().filter(|c| nodes.contains(&c.id)) {
                    node_cpus.extend(&c.cpus);
                }
                node_cpus.sort_unstable();
                map(
                    "NUMA node affinity",
                    vmware,
                    format!(
                        "<numatune><memory mode='strict' nodeset='{}'/>{}",
                        cpuset(&nodes),
                        if renumbered {
                            " (renumbered: the destination lacks the ESXi host's node numbers)"
                        } else {
                            ""
                        }
                    ),
                    true,
                );
                t.memory_nodes = nodes;
            }
            Err(have) => {
                let why = format!(
                    "the destination has {have} NUMA node(s), the affinity names {}",
                    src.numa_node_affinity.len()
                );
                map(
                    "NUMA node affinity",
                    vmware,
                    format!("not carried: {why}"),
                    false,
                );
                concerns.push(too_small(
                    "numa.nodeAffinity",
                    format!("NUMA node affinity not carried: {why}"),
                ));
            }
        }
    }

    // CPU affinity: every vCPU on the same set, as VMware schedules it; taken from
    // the bound nodes' CPUs first when it has to be renumbered.
    if !src.cpu_affinity.is_empty() {
        let vmware = format!("sched.cpu.affinity = {}", cpuset(&src.cpu_affinity));
        let mut order = node_cpus.clone();
        order.extend(host_cpus.iter().filter(|c| !node_cpus.contains(c)));
        match map_onto(&src.cpu_affinity, &order) {
            Ok((cpus, renumbered)) => {
                map(
                    "CPU affinity",
                    vmware,
                    format!(
                        "<vcpupin> every vCPU on host CPUs {}{}",
                        cpuset(&cpus),
                        if renumbered {
                            " (renumbered: the destination lacks the ESXi host's CPU numbers)"
                        } else {
                            ""
                        }
                    ),
                    true,
                );
                t.vcpu_cpuset = cpus;
            }
            Err(have) => {
                let why = format!(
                    "the destination has {have} CPU(s), the affinity names {}",
                    src.cpu_affinity.len()
                );
                map("CPU affinity", vmware, format!("not carried: {why}"), false);
                concerns.push(too_small(
                    "sched.cpu.affinity",
                    format!("CPU affinity not carried: {why}"),
                ));
            }
        }
    } else if !node_cpus.is_empty() {
        t.vcpu_cpuset = node_cpus.clone();
    }

    // vNUMA: cells of at most `per` vCPUs. VMware turns vNUMA off when CPU hot-add
    // is on, and so does the target.
    let mut cells = 1u64;
    if let Some(per) = src.vnuma_max_vcpus_per_node {
        let vmware = format!("numa.vcpu.maxPerVirtualNode = {per}");
        if src.cpu_hot_add {
            map(
                "vNUMA",
                vmware,
                "one node, as on VMware: CPU hot-add turns vNUMA off".into(),
                true,
            );
        } else {
            cells = u64::from(max_vcpus.div_ceil(per.max(1)));
            if cells < 2 {
                map(
                    "vNUMA",
                    vmware,
                    format!("one node: {max_vcpus} vCPU(s) fit in it"),
                    true,
                );
            } else if memory_mib < cells {
                map(
                    "vNUMA",
                    vmware,
                    "not carried: less than 1 MiB per node".into(),
                    false,
                );
                cells = 1;
            }
        }
    }

    // All memory reserved: hugepages (the largest size the host has enough of on
    // the bound nodes, that each cell's share is a multiple of), locked.
    let full = src.memory_pinned || src.memory_reservation_mib.is_some_and(|r| r >= memory_mib);
    let memory_kib = memory_mib.saturating_mul(1024);
    if full {
        let vmware = if src.memory_pinned {
            "sched.mem.pin = TRUE".to_string()
        } else {
            format!(
                "sched.mem.min = {} MiB = memsize",
                src.memory_reservation_mib.unwrap_or(0)
            )
        };
        let have = host.hugepages(&t.memory_nodes);
        let fits = |&&(size, count): &&(u64, u64)| {
            count.saturating_mul(size) >= memory_kib
                && size > 0
                && memory_kib.is_multiple_of(size)
                && (memory_kib / cells) >= size
        };
        match have.iter().rev().find(fits) {
            Some(&(size, _)) => {
                t.hugepage_kib = Some(size);
                map(
                    "Memory reservation",
                    vmware,
                    format!("<memoryBacking><hugepages> of {size} KiB, <locked/>"),
                    true,
                );
            }
            None => {
                let pages = memory_kib.div_ceil(DEFAULT_HUGEPAGE_KIB);
                let have = if have.is_empty() {
                    "none".to_string()
                } else {
                    have.iter()
                        .map(|(s, n)| format!("{n} of {s} KiB"))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                let why = format!(
                    "the destination has too few hugepages for {memory_mib} MiB (reserved: {have})"
                );
                map(
                    "Memory reservation",
                    vmware,
                    format!("not carried: {why}"),
                    false,
                );
                concerns.push(concern(
                    "hugepages-unavailable",
                    None,
                    format!(
                        "all guest memory is reserved on VMware, but {why}: reserve {pages} \
                         more 2 MiB pages on the destination (sysctl vm.nr_hugepages) and \
                         migrate again, or run it on ordinary pages"
                    ),
                ));
            }
        }
    } else if let Some(r) = src.memory_reservation_mib {
        map(
            "Memory reservation",
            format!("sched.mem.min = {r} of {memory_mib} MiB"),
            "not carried: KVM has no partial reservation".into(),
            false,
        );
    }
    let align_mib = t.hugepage_kib.map_or(1, |k| (k / 1024).max(1));

    // Memory hot-add: headroom up to the host's memory; libvirt wants a NUMA cell.
    if src.memory_hot_add {
        let max = host.memory_mib() / MEMORY_BLOCK_MIB * MEMORY_BLOCK_MIB;
        let max = max / align_mib * align_mib;
        if max > memory_mib {
            t.max_memory_mib = Some(max);
            map(
                "Memory hot-add",
                "mem.hotadd = TRUE".into(),
                format!("<maxMemory slots='{MEMORY_SLOTS}' unit='MiB'>{max}</maxMemory>: up to the host's memory"),
                true,
            );
        } else {
            let why = format!(
                "the destination has {} MiB: no room beyond the VM's {memory_mib} MiB",
                host.memory_mib()
            );
            map(
                "Memory hot-add",
                "mem.hotadd = TRUE".into(),
                format!("not carried: {why}"),
                false,
            );
            concerns.push(too_small(
                "mem.hotadd",
                format!("memory hot-add not carried: {why}"),
            ));
        }
    }

    if cells >= 2 || t.max_memory_mib.is_some() {
        t.guest_cells = guest_cells(max_vcpus, memory_mib, cells.max(1), align_mib);
        if cells >= 2 {
            let per = src.vnuma_max_vcpus_per_node.unwrap_or(max_vcpus);
            map(
                "vNUMA",
                format!("numa.vcpu.maxPerVirtualNode = {per}"),
                format!("<cpu><numa>: {cells} cells of up to {per} vCPUs"),
                true,
            );
        }
    }
    t.mappings = mappings;
    Planned {
        tuning: t,
        sockets,
        concerns,
    }
}

/// `cells` guest NUMA cells over `vcpus` vCPUs and `memory_mib`: vCPUs in even runs,
/// memory split evenly in multiples of `align_mib` (the
/// hugepage size), the rest to the last cell.
pub(crate) fn guest_cells(
    vcpus: u32,
    memory_mib: u64,
    cells: u64,
    align_mib: u64,
) -> Vec<GuestCell> {
    let v = u64::from(vcpus.max(1));
    let cells = cells.clamp(1, v);
    let share = memory_mib / cells / align_mib * align_mib;
    (0..cells)
        .map(|i| GuestCell {
            // Even runs, the longer ones last: none longer than ceil(vcpus / cells).
            first_cpu: (i * v / cells) as u32,
            last_cpu: ((i + 1) * v / cells - 1) as u32,
            memory_mib: if i + 1 == cells {
                memory_mib - share * (cells - 1)
            } else {
                share
            },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::HostCell;
    use v2k_inventory::model::{SourceKind, Tuning};

    /// A host cell for tests: its CPUs, MiB, and (page KiB, count) hugepages.
    type Cell<'a> = (&'a [u32], u64, &'a [(u64, u64)]);

    fn host(cells: &[Cell]) -> HostTopology {
        HostTopology {
            source: "test".into(),
            cells: cells
                .iter()
                .enumerate()
                .map(|(i, (cpus, mib, pages))| HostCell {
                    id: i as u32,
                    memory_kib: mib * 1024,
                    cpus: cpus.to_vec(),
                    hugepages: pages.to_vec(),
                })
                .collect(),
        }
    }

    fn vm(tuning: Tuning) -> Vm {
        let mut vm = Vm::new_empty(SourceKind::Vmx, "/x/a.vmx".into());
        vm.tuning = tuning;
        vm
    }

    fn ids(p: &Planned) -> Vec<&str> {
        p.concerns.iter().map(|c| c.id.as_str()).collect()
    }

    #[test]
    fn cpusets_are_written_as_ranges() {
        assert_eq!(cpuset(&[0, 1, 2, 3, 6]), "0-3,6");
        assert_eq!(cpuset(&[5]), "5");
        assert_eq!(cpuset(&[1, 3, 4]), "1,3-4");
        assert_eq!(cpuset(&[]), "");
    }

    #[test]
    fn an_affinity_is_kept_renumbered_or_refused_by_the_host_it_lands_on() {
        let aff = [0, 1, 2, 3, 6];
        let v = vm(Tuning {
            cpu_affinity: aff.to_vec(),
            ..Tuning::default()
        });
        // Eight CPUs: the same numbers.
        let p = plan(
            &v,
            4,
            1,
            4096,
            &host(&[(&[0, 1, 2, 3, 4, 5, 6, 7], 16384, &[])]),
        );
        assert_eq!(p.tuning.vcpu_cpuset, aff);
        assert!(p.concerns.is_empty());
        assert!(
            p.tuning.mappings[0].kvm.contains("host CPUs 0-3,6"),
            "{:?}",
            p.tuning.mappings
        );
        // Six CPUs (no CPU 6): five of them, renumbered.
        let p = plan(&v, 4, 1, 4096, &host(&[(&[0, 1, 2, 3, 4, 5], 16384, &[])]));
        assert_eq!(p.tuning.vcpu_cpuset, [0, 1, 2, 3, 4]);
        assert!(p.tuning.mappings[0].kvm.contains("renumbered"));
        // Four CPUs: fewer than the affinity names, refused with a concern.
        let p = plan(&v, 4, 1, 4096, &host(&[(&[0, 1, 2, 3], 16384, &[])]));
        assert!(p.tuning.vcpu_cpuset.is_empty());
        assert_eq!(ids(&p), ["tuning-host-too-small"]);
        assert!(p.concerns[0]
            .message
            .contains("has 4 CPU(s), the affinity names 5"));
        assert!(!p.tuning.mappings[0].carried);
    }

    #[test]
    fn numa_affinity_binds_memory_and_keeps_vcpus_on_the_nodes_cpus() {
        let h = host(&[
            (&[0, 1, 2, 3], 8192, &[]),
            (&[4, 5, 6, 7], 8192, &[(2048, 2048)]),
        ]);
        let v = vm(Tuning {
            numa_node_affinity: vec![1],
            memory_pinned: true,
            ..Tuning::default()
        });
        let p = plan(&v, 2, 1, 2048, &h);
        assert_eq!(p.tuning.memory_nodes, [1]);
        assert_eq!(p.tuning.vcpu_cpuset, [4, 5, 6, 7]);
        // Node 1's hugepages count, node 0 has none.
        assert_eq!(p.tuning.hugepage_kib, Some(2048));
        // A CPU affinity the host lacks is renumbered onto the bound node first.
        let v = vm(Tuning {
            numa_node_affinity: vec![1],
            cpu_affinity: vec![20, 21],
            ..Tuning::default()
        });
        assert_eq!(plan(&v, 2, 1, 2048, &h).tuning.vcpu_cpuset, [4, 5]);
        // Node 3 on a two-node host: renumbered; three nodes on it: refused.
        let v = vm(Tuning {
            numa_node_affinity: vec![3],
            ..Tuning::default()
        });
        assert_eq!(plan(&v, 2, 1, 2048, &h).tuning.memory_nodes, [0]);
        let v = vm(Tuning {
            numa_node_affinity: vec![0, 1, 2],
            ..Tuning::default()
        });
        let p = plan(&v, 2, 1, 2048, &h);
        assert_eq!(ids(&p), ["tuning-host-too-small"]);
        assert!(p.tuning.memory_nodes.is_empty() && p.tuning.vcpu_cpuset.is_empty());
    }

    #[test]
    fn a_full_reservation_needs_the_hosts_hugepages_or_names_the_sysctl() {
        let v = vm(Tuning {
            memory_reservation_mib: Some(4096),
            ..Tuning::default()
        });
        // 2048 pages of 2 MiB = 4 GiB: enough.
        let p = plan(&v, 2, 1, 4096, &host(&[(&[0, 1], 16384, &[(2048, 2048)])]));
        assert_eq!(p.tuning.hugepage_kib, Some(2048));
        // 1 GiB pages preferred when there are enough of them.
        let p = plan(
            &v,
            2,
            1,
            4096,
            &host(&[(&[0, 1], 16384, &[(2048, 2048), (1048576, 4)])]),
        );
        assert_eq!(p.tuning.hugepage_kib, Some(1048576));
        // Too few: a warning naming the sysctl and the count.
        let p = plan(&v, 2, 1, 4096, &host(&[(&[0, 1], 16384, &[(2048, 100)])]));
        assert_eq!(p.tuning.hugepage_kib, None);
        assert_eq!(ids(&p), ["hugepages-unavailable"]);
        let m = &p.concerns[0].message;
        assert!(
            m.contains("vm.nr_hugepages")
                && m.contains("reserve 2048 more")
                && m.contains("100 of 2048 KiB"),
            "{m}"
        );
        // A partial reservation is not carried, and says so, without a host concern.
        let p = plan(&v, 2, 1, 8192, &host(&[(&[0, 1], 16384, &[])]));
        assert!(p.concerns.is_empty());
        assert_eq!(
            p.tuning.mappings[0].kvm,
            "not carried: KVM has no partial reservation"
        );
    }

    #[test]
    fn hot_add_grows_to_the_host_in_whole_sockets() {
        let v = vm(Tuning {
            cpu_hot_add: true,
            memory_hot_add: true,
            ..Tuning::default()
        });
        // 8 host CPUs, 3 cores per socket: 6 vCPUs at most, 2 sockets.
        let p = plan(
            &v,
            3,
            3,
            4096,
            &host(&[(&(0..8).collect::<Vec<_>>(), 16400, &[])]),
        );
        assert_eq!(p.tuning.max_vcpus, Some(6));
        assert_eq!(p.sockets, 2);
        // Memory up to the host's, in 128 MiB blocks, with the one cell libvirt wants.
        assert_eq!(p.tuning.max_memory_mib, Some(16384));
        assert_eq!(
            p.tuning.guest_cells,
            [GuestCell {
                first_cpu: 0,
                last_cpu: 5,
                memory_mib: 4096
            }]
        );
        // A host no bigger than the VM: neither, each a concern.
        let p = plan(&v, 2, 1, 4096, &host(&[(&[0, 1], 4096, &[])]));
        assert_eq!(p.tuning.max_vcpus, None);
        assert_eq!(p.tuning.max_memory_mib, None);
        assert_eq!(ids(&p), ["tuning-host-too-small", "tuning-host-too-small"]);
        assert_eq!(p.sockets, 2);
    }

    #[test]
    fn vnuma_cells_split_vcpus_and_memory() {
        let v = vm(Tuning {
            vnuma_max_vcpus_per_node: Some(4),
            ..Tuning::default()
        });
        let p = plan(&v, 10, 1, 10000, &host(&[(&[0, 1], 16384, &[])]));
        let c = &p.tuning.guest_cells;
        assert_eq!(c.len(), 3);
        assert_eq!(
            (c[0].first_cpu, c[0].last_cpu, c[0].memory_mib),
            (0, 2, 3333)
        );
        assert_eq!(
            (c[2].first_cpu, c[2].last_cpu, c[2].memory_mib),
            (6, 9, 3334)
        );
        assert_eq!(c.iter().map(|c| c.memory_mib).sum::<u64>(), 10000);
        // Hugepage-aligned shares.
        assert_eq!(
            guest_cells(4, 4096, 3, 2)
                .iter()
                .map(|c| c.memory_mib)
                .collect::<Vec<_>>(),
            [1364, 1364, 1368]
        );
        // Fewer vCPUs than a node holds: one node, nothing to build.
        let p = plan(&v, 4, 1, 4096, &host(&[(&[0, 1], 16384, &[])]));
        assert!(p.tuning.guest_cells.is_empty());
        // CPU hot-add on: VMware has no vNUMA then, nor does the target.
        let v = vm(Tuning {
            vnuma_max_vcpus_per_node: Some(2),
            cpu_hot_add: true,
            ..Tuning::default()
        });
        assert!(plan(&v, 4, 1, 4096, &host(&[(&[0, 1], 16384, &[])]))
            .tuning
            .guest_cells
            .is_empty());
    }

    #[test]
    fn odd_cores_per_socket_is_shown_not_carried() {
        let mut v = vm(Tuning::default());
        v.cpu.cores_per_socket = 4;
        // The target chose one core per socket because 4 does not divide 6.
        let p = plan(&v, 6, 1, 4096, &host(&[(&[0, 1], 16384, &[])]));
        assert_eq!(p.sockets, 6);
        assert!(!p.tuning.mappings[0].carried);
        assert!(p.tuning.mappings[0]
            .kvm
            .contains("4 does not divide 6 vCPUs"));
        v.cpu.cores_per_socket = 3;
        let p = plan(&v, 6, 3, 4096, &host(&[(&[0, 1], 16384, &[])]));
        assert_eq!(p.sockets, 2);
        assert_eq!(
            p.tuning.mappings[0].kvm,
            "<topology sockets='2' cores='3' threads='1'/>"
        );
    }
}
