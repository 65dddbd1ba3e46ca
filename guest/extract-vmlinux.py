#!/usr/bin/env python3
"""Extract the uncompressed kernel (an ELF vmlinux) from a bzImage.

QEMU boots an ELF vmlinux through its PVH entry point, skipping the
real-mode setup and the in-guest decompression, which under TCG costs most
of a second. The compressed payload's place is in the bzImage's setup
header (boot protocol 2.08+: payload_offset at 0x248, payload_length 0x24c).
usage: extract-vmlinux.py BZIMAGE OUT
"""
import gzip
import lzma
import struct
import subprocess
import sys


def main(src, dst):
    data = open(src, "rb").read()
    setup_sects = data[0x1F1] or 4
    offset, length = struct.unpack_from("<II", data, 0x248)
    start = (setup_sects + 1) * 512 + offset
    payload = data[start:start + length]
    if payload.startswith(b"\x28\xb5\x2f\xfd"):
        # The payload ends with the 4-byte uncompressed size, which zstd
        # reports as trailing garbage after a complete frame: ignore it.
        out = subprocess.run(["zstd", "-d", "-c", "-q"], input=payload[:-4],
                             capture_output=True, check=True).stdout
    elif payload.startswith(b"\x1f\x8b"):
        out = gzip.decompress(payload[:-4])
    elif payload.startswith(b"\xfd7zXZ"):
        out = lzma.decompress(payload[:-4], format=lzma.FORMAT_XZ)
    else:
        sys.exit(f"extract-vmlinux: unknown compression {payload[:4].hex()}")
    if not out.startswith(b"\x7fELF"):
        sys.exit("extract-vmlinux: the payload is not an ELF image")
    open(dst, "wb").write(out)


if __name__ == "__main__":
    main(*sys.argv[1:3])
