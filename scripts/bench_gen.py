#!/usr/bin/env python3
"""Deterministic benchmark disk generator for scripts/bench-convert.sh.

Writes a sparse raw image whose content resembles a used guest disk
(FIELD-NOTES §4): compressible regions (real ELF binaries from /usr/lib, about
2.6:1 with QEMU's qcow2 deflate settings), random regions, explicit zero regions
(zeros actually written) and holes (never written), with 4 KiB-aligned region
boundaries (so clusters mix data, zeros and holes) and a virtual size that is not
a multiple of the 64 KiB cluster/grain size, the last partial cluster holding data.

  bench_gen.py key  --size-gib N --seed S          prints the cache key
  bench_gen.py gen  --size-gib N --seed S --out DIR

`gen` writes DIR/disk.raw, DIR/zeros.txt (one "OFFSET LENGTH" per explicit zero
region, for qemu-io) and DIR/layout.json (what was generated). Everything is a
function of (size, seed, generator version, the list of ELF files in /usr/lib):
the last is fingerprinted into the key, so a machine with other packages gets a
different key instead of silently different content.
"""

import argparse
import hashlib
import json
import os
import random
import sys
import zlib

GEN_VERSION = 1
GiB = 1 << 30
MiB = 1 << 20
KiB = 1 << 10
BLOCK = 4 * KiB
# Extra bytes after the whole GiBs: 1 MiB + 38400 B = 75 sectors past a 64 KiB
# boundary, so the last cluster/grain is partial.
TAIL_EXTRA = MiB + 38400
# Share of the virtual size per region kind: 0.45 non-zero (0.9 GiB in 2 GiB).
TARGETS = {"compressible": 0.30, "random": 0.15, "zeros": 0.10, "hole": 0.45}
MIN_ELF = 64 * KiB


def elf_files():
    out = []
    for root, dirs, files in os.walk("/usr/lib"):
        dirs.sort()
        for f in sorted(files):
            p = os.path.join(root, f)
            try:
                if os.path.islink(p) or not os.path.isfile(p):
                    continue
                st = os.stat(p)
                if st.st_size < MIN_ELF:
                    continue
                with open(p, "rb") as h:
                    if h.read(4) != b"\x7fELF":
                        continue
            except OSError:
                continue
            out.append((p, st.st_size))
    out.sort()
    return out


def fingerprint(files):
    h = hashlib.sha256()
    for p, s in files:
        h.update(f"{p}\t{s}\n".encode())
    return h.hexdigest()[:16]


def key(size_gib, seed, files):
    return f"g{GEN_VERSION}-s{size_gib}-seed{seed}-lib{fingerprint(files)}"


class ElfStream:
    """Concatenation of the ELF files in a seeded order, wrapping around."""

    def __init__(self, files, rng):
        self.files = list(files)
        rng.shuffle(self.files)
        self.i = 0
        self.buf = b""
        self.used = set()

    def read(self, n):
        parts = []
        while n > 0:
            if not self.buf:
                p, _ = self.files[self.i % len(self.files)]
                self.i += 1
                self.used.add(p)
                with open(p, "rb") as h:
                    self.buf = h.read()
                continue
            take = self.buf[:n]
            self.buf = self.buf[n:]
            parts.append(take)
            n -= len(take)
        return b"".join(parts)


def layout(size, rng):
    """Regions (offset, length, kind) covering [0, size)."""
    regions = []
    used = {k: 0 for k in TARGETS}
    # The last 128 KiB before the final 64 KiB boundary and the partial tail are data.
    tail_start = (size // (64 * KiB)) * (64 * KiB) - 128 * KiB
    pos = 0
    while pos < tail_start:
        if rng.random() < 0.7:
            n = BLOCK * rng.randint(1, 64)  # small files: 4..256 KiB
        else:
            n = rng.randint(1, 32) * MiB + BLOCK * rng.randint(0, 255)
        n = min(n, tail_start - pos)
        end = pos + n
        deficits = {k: TARGETS[k] * end - used[k] for k in TARGETS}
        cands = [(k, d) for k, d in deficits.items() if d > 0]
        if not cands:
            cands = list(TARGETS.items())
        kinds, weights = zip(*cands)
        kind = rng.choices(kinds, weights=weights)[0]
        if regions and regions[-1][2] == kind:
            o, l, k = regions[-1]
            regions[-1] = (o, l + n, k)
        else:
            regions.append((pos, n, kind))
        used[kind] += n
        pos = end
    regions.append((pos, size - pos, "compressible"))
    return regions


def ratio_sample(data_chunks):
    """Compression ratio with QEMU's qcow2 settings (deflate level 6, 4 KiB window)
    over 64 KiB clusters, a cluster kept raw when it does not shrink."""
    raw = comp = 0
    for c in data_chunks:
        co = zlib.compressobj(6, zlib.DEFLATED, -12)
        z = co.compress(c) + co.flush()
        raw += len(c)
        comp += min(len(z), len(c))
    return raw / comp if comp else 0.0


def gen(size_gib, seed, out):
    files = elf_files()
    if not files:
        sys.exit("bench_gen: no ELF files of 64 KiB or more under /usr/lib")
    size = size_gib * GiB + TAIL_EXTRA
    rng_layout = random.Random(f"layout-{seed}")
    rng_random = random.Random(f"random-{seed}")
    elf = ElfStream(files, random.Random(f"elf-{seed}"))
    regions = layout(size, rng_layout)

    os.makedirs(out, exist_ok=True)
    raw_path = os.path.join(out, "disk.raw")
    tmp = raw_path + ".tmp"
    sample = []
    totals = {k: 0 for k in TARGETS}
    counts = {k: 0 for k in TARGETS}
    zeros = []
    zero_mib = bytes(MiB)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.ftruncate(fd, size)
        for off, n, kind in regions:
            totals[kind] += n
            counts[kind] += 1
            if kind == "hole":
                continue
            if kind == "zeros":
                zeros.append((off, n))
            done = 0
            while done < n:
                m = min(MiB, n - done)
                if kind == "compressible":
                    b = elf.read(m)
                    # every 16th MiB-piece feeds the compression-ratio sample
                    if len(sample) < 4096 and (off + done) // MiB % 16 == 0:
                        sample.extend(b[i:i + 64 * KiB] for i in range(0, len(b) - 64 * KiB + 1, 64 * KiB))
                elif kind == "random":
                    b = rng_random.randbytes(m)
                else:
                    b = zero_mib[:m]
                os.pwrite(fd, b, off + done)
                done += m
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, raw_path)
    with open(os.path.join(out, "zeros.txt"), "w") as z:
        for off, n in zeros:
            z.write(f"{off} {n}\n")
    facts = {
        "generator-version": GEN_VERSION,
        "seed": seed,
        "virtual-size": size,
        "regions": len(regions),
        "bytes": totals,
        "region-counts": counts,
        "non-zero-bytes": totals["compressible"] + totals["random"],
        "elf-files-available": len(files),
        "elf-files-used": len(elf.used),
        "compressible-ratio-sample": round(ratio_sample(sample), 2),
        "compressible-ratio-sample-clusters": len(sample),
    }
    with open(os.path.join(out, "layout.json"), "w") as f:
        json.dump(facts, f, indent=2)
        f.write("\n")
    json.dump(facts, sys.stdout, indent=2)
    print()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("cmd", choices=["key", "gen"])
    ap.add_argument("--size-gib", type=int, required=True)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out")
    a = ap.parse_args()
    if a.size_gib < 1:
        sys.exit("bench_gen: --size-gib must be at least 1")
    if a.cmd == "key":
        print(key(a.size_gib, a.seed, elf_files()))
    else:
        if not a.out:
            sys.exit("bench_gen: gen needs --out")
        gen(a.size_gib, a.seed, a.out)


if __name__ == "__main__":
    main()
