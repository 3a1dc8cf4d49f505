#!/usr/bin/env bash
# Benchmarks scale-out (docs/scale-out.md):
#  1. `v2k wave assign` of a synthetic 5,000-VM plan (50 waves of 100 VMs on 100 ESXi
#     hosts, 20 disks per ESXi host) over 50 conversion hosts: wall time (goal <= 2 s)
#     and how even the split is.
#  2. The same 6-VM wave (small sparse VMDKs, converted and verified, no guest
#     surgery, no boot) on 1, 2 and 3 conversion hosts, each a `v2k wave run` of its
#     shard started at once on this machine: the coordination overhead (assign, the
#     runs' start and end, the merge: total wall time minus the busiest host's VM
#     work) as a share of the total (goal <= 5 %).
#
#   scripts/bench-scale.sh            (V2K=path/to/v2k to pick a binary;
#                                      BENCH_VM_MIB=N: MiB written per VM, default 96)
set -euo pipefail
V2K=${V2K:-${CARGO_TARGET_DIR:-target}/release/v2k}
[ -x "$V2K" ] || { echo "bench-scale: build first: cargo build --release -p v2k-cli (or set V2K)" >&2; exit 2; }
command -v jq >/dev/null || { echo "bench-scale: jq is required" >&2; exit 2; }
command -v qemu-img >/dev/null || { echo "bench-scale: qemu-img is required (scripts/setup.sh)" >&2; exit 2; }
WORK=$(mktemp -d /var/tmp/v2k-bench-scale.XXXXXX)
trap '[ -n "${KEEP:-}" ] || rm -rf "$WORK"' EXIT
now() { date +%s.%N; }

# ---- 1. assign 5,000 VMs over 50 hosts -------------------------------------------
S=$WORK/synthetic
mkdir -p "$S"
python3 - "$S" <<'EOF'
import os, sys
root = sys.argv[1]
lines = ["version: 1", "limits:", "  vms: 4", "  esxi-host-disks: 20", "waves:"]
n = 0
for w in range(50):
    lines += [f"  - name: wave{w:02}", "    vms:"]
    for v in range(100):
        name = f"vm{n:04}"
        d = os.path.join(root, "vms", name)
        os.makedirs(d)
        disks = n % 3 + 1
        vmx = [f'displayName = "{name}"', 'guestOS = "debian12-64"', 'memSize = "512"',
               'scsi0.present = "TRUE"']
        for k in range(disks):
            size = (n * 7 + k) % 64 + 1  # MiB, virtual
            with open(os.path.join(d, f"d{k}.vmdk"), "w") as f:
                f.write("# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n"
                        f'createType="monolithicFlat"\nRW {size * 2048} FLAT "d{k}-flat.vmdk" 0\n'
                        'ddb.adapterType = "lsilogic"\n')
            with open(os.path.join(d, f"d{k}-flat.vmdk"), "wb") as f:
                f.truncate(size << 20)
            vmx += [f'scsi0:{k}.present = "TRUE"', f'scsi0:{k}.fileName = "d{k}.vmdk"']
        with open(os.path.join(d, f"{name}.vmx"), "w") as f:
            f.write("\n".join(vmx) + "\n")
        lines += [f"      - source: vms/{name}/{name}.vmx", f"        esxi-host: esx{n % 100:03}"]
        n += 1
with open(os.path.join(root, "plan.yaml"), "w") as f:
    f.write("\n".join(lines) + "\n")
EOF
HOSTS=$(seq -f 'conv%02g' 1 50 | paste -sd,)
t0=$(now)
"$V2K" wave assign "$S/plan.yaml" --hosts "$HOSTS" -o "$S/shards" --json > "$S/assignment.jsonl"
t1=$(now)
ASSIGN=$(echo "$t1 - $t0" | bc -l)
read -r SHARDS VMIN VMAX < <(jq -r '[.shards[] | .vms | length] | "\(length) \(min) \(max)"' "$S/assignment.jsonl")
OVER=$(jq -r '[.budgets["esxi-hosts"] as $b | .hosts[] | .shares["esxi-hosts"] // {} | to_entries[]] | group_by(.key) | map({k: .[0].key, s: (map(.value) | add)}) | length' "$S/assignment.jsonl")
printf 'assign: 5000 VMs, 50 waves, 100 ESXi hosts over 50 conversion hosts: %.2f s (goal <= 2 s); %s shards, %s-%s VMs each; %s ESXi hosts shared\n' \
  "$ASSIGN" "$SHARDS" "$VMIN" "$VMAX" "$OVER"
jq -e '. as $r | [$r.budgets["esxi-hosts"] | to_entries[] | .key as $e | .value as $b
  | ([$r.hosts[] | .shares["esxi-hosts"][$e] // 0] | add) <= $b] | all' "$S/assignment.jsonl" >/dev/null \
  || { echo "bench-scale: a budget is over-committed" >&2; exit 1; }

# ---- 2. the same 6-VM wave on 1, 2 and 3 hosts -----------------------------------
W=$WORK/wave
mkdir -p "$W"
for i in 1 2 3 4 5 6; do
  mkdir -p "$W/vm$i"
  # The per-VM work grows with the data; the coordination cost does not (it is per
  # run), so its share shrinks as VMs approach real sizes: run both to see it.
  MIB=${BENCH_VM_MIB:-96}
  qemu-img create -q -f vmdk -o subformat=monolithicSparse "$W/vm$i/disk.vmdk" "$((MIB + 160))M"
  qemu-io -f vmdk -c "write -P 0x$i$i 0 ${MIB}M" "$W/vm$i/disk.vmdk" > /dev/null
  printf 'displayName = "vm%s"\nguestOS = "debian12-64"\nmemSize = "512"\nscsi0.present = "TRUE"\nscsi0:0.present = "TRUE"\nscsi0:0.fileName = "disk.vmdk"\n' "$i" > "$W/vm$i/vm$i.vmx"
done
{
  echo "version: 1"
  echo "defaults: { validate: false, inject: false, backend: qemu }"
  echo "limits: { vms: 1, esxi-host-disks: 2 }"
  echo "waves:"
  echo "  - name: bench"
  echo "    vms:"
  for i in 1 2 3 4 5 6; do echo "      - { source: vm$i/vm$i.vmx, esxi-host: esx$((i % 2)) }"; done
} > "$W/plan.yaml"
for n in 1 2 3; do
  out=$W/hosts-$n
  t0=$(now)
  "$V2K" wave assign "$W/plan.yaml" --hosts "$(seq -f 'conv%g' 1 "$n" | paste -sd,)" -o "$out" > /dev/null
  pids=()
  for shard in "$out"/conv*.yaml; do
    "$V2K" wave run --json "$shard" > "${shard%.yaml}.events" 2>&1 & pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p"; done
  "$V2K" wave report --merge "$out"/conv*.run -o "$out/merged" > /dev/null
  t1=$(now)
  wall=$(echo "$t1 - $t0" | bc -l)
  # The busiest host's VM work: the sum of its VMs' own times (one VM at a time).
  busiest=$(for j in "$out"/conv*.run/journal.jsonl; do
      jq -s '[.[] | select(.type == "vm-finished") | .seconds] | add // 0' "$j"; done | sort -g | tail -1)
  migrated=$(jq '.summary.migrated' "$out/merged/bench/wave-report.json")
  overhead=$(echo "$wall - $busiest" | bc -l)
  printf '%d host(s): wall %.2f s, busiest host VM work %.2f s, coordination %.2f s (%.1f %%), %s of 6 migrated\n' \
    "$n" "$wall" "$busiest" "$overhead" "$(echo "100 * $overhead / $wall" | bc -l)" "$migrated"
done
