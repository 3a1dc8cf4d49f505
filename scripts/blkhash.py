#!/usr/bin/env python3
"""Reference implementation of v2k-blkhash-sha256 (docs/blkhash.md).

Usage: blkhash.py RAW_IMAGE    prints the hash of the file's bytes as a virtual disk.
Convert any image to raw first (qemu-img convert -O raw X x.raw) to reproduce the
hash that v2k records in its manifests. Independent of v2k's Rust code on purpose:
the test suite uses it to check v2k's hashes.
"""
import hashlib
import struct
import sys

BLOCK = 64 * 1024


def blkhash(path):
    outer = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while True:
            block = f.read(BLOCK)
            if not block:
                break
            size += len(block)
            outer.update(hashlib.sha256(block).digest())
    outer.update(struct.pack("<Q", size))
    return outer.hexdigest()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: blkhash.py RAW_IMAGE")
    print(blkhash(sys.argv[1]))
