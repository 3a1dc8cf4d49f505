#!/usr/bin/env bash
# Performance check of issue 3: `v2k inspect DIR --json` over 1,000 VMX files (each
# with a VMFS descriptor and a sparse 1 MiB flat extent, so the converter's VMDK
# reader really opens every disk) must finish in under 1 s.
#
# Usage: scripts/bench-inspect.sh [COUNT] [LIMIT_SECONDS]
# Uses $CARGO_TARGET_DIR (default target/) and builds the release binary first.
# Prints one line "inspect of N VMX: X.XXX s (best of 3)" and exits 1 over the limit.
set -euo pipefail

COUNT=${1:-1000}
LIMIT=${2:-1.0}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}

cargo build --release -q -p v2k-cli --manifest-path "$ROOT/Cargo.toml"
V2K=$TARGET/release/v2k

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

python3 - "$WORK" "$COUNT" <<'PY'
import os, sys
work, count = sys.argv[1], int(sys.argv[2])
for i in range(count):
    name = f"vm{i:04d}"
    d = os.path.join(work, name)
    os.mkdir(d)
    with open(os.path.join(d, name + ".vmx"), "w") as f:
        f.write(f""".encoding = "UTF-8"
config.version = "8"
virtualHW.version = "19"
displayName = "{name}"
guestOS = "{'windows2019srv-64' if i % 10 == 0 else 'ubuntu-64'}"
numvcpus = "2"
cpuid.coresPerSocket = "2"
memSize = "4096"
firmware = "{'efi' if i % 2 else 'bios'}"
scsi0.present = "TRUE"
scsi0.virtualDev = "pvscsi"
scsi0:0.present = "TRUE"
scsi0:0.fileName = "{name}.vmdk"
sata0.present = "TRUE"
sata0:0.present = "TRUE"
sata0:0.deviceType = "cdrom-image"
sata0:0.fileName = "/vmfs/volumes/iso/ubuntu.iso"
ethernet0.present = "TRUE"
ethernet0.virtualDev = "vmxnet3"
ethernet0.networkName = "VM Network"
ethernet0.addressType = "vpx"
ethernet0.generatedAddress = "00:50:56:9a:{i // 256:02x}:{i % 256:02x}"
uuid.bios = "42 1a 00 00 00 00 00 00-00 00 00 00 00 00 {i // 256:02x} {i % 256:02x}"
ctkEnabled = "TRUE"
""")
    with open(os.path.join(d, name + ".vmdk"), "w") as f:
        f.write(f'# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType="vmfs"\n\nRW 2048 VMFS "{name}-flat.vmdk"\n\nddb.adapterType = "pvscsi"\n')
    with open(os.path.join(d, name + "-flat.vmdk"), "wb") as f:
        f.truncate(1 << 20)
PY

# Timed in Python (monotonic clock, no bc needed); exit 1 from v2k is expected since
# every tenth VM is Windows, a critical concern.
python3 - "$V2K" "$WORK" "$COUNT" "$LIMIT" <<'PY'
import subprocess, sys, time
v2k, work, count, limit = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
best = None
for _ in range(3):
    t0 = time.monotonic()
    p = subprocess.run([v2k, "inspect", "--json", work], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    t = time.monotonic() - t0
    if p.returncode not in (0, 1):
        sys.exit(f"bench-inspect: v2k exited {p.returncode}: {p.stderr.decode()[-500:]}")
    best = t if best is None else min(best, t)
vms = p.stdout.count(b'"type":"vm"')
if vms != count:
    sys.exit(f"bench-inspect: expected {count} VMs, got {vms}")
print(f"inspect of {count} VMX: {best:.3f} s (best of 3, limit {limit} s)")
sys.exit(0 if best < limit else 1)
PY
