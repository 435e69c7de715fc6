#!/usr/bin/env python3
"""Is a screenshot more than its background? Decodes an 8-bit, non-interlaced PNG with the
standard library only (zlib + struct; no PIL on a bare test machine), takes the most common
pixel as the background and counts the pixels that differ from it.

usage: png_nonblank.py FILE.png [--min-fraction F] [--expect-color #rrggbb ...]
Exit 0 when at least F (default 0.01) of the pixels differ and every expected colour occurs
(within 8 per channel, so anti-aliasing does not matter); 1 when not; 2 when FILE is not a PNG
this script can read. Prints one line saying what it found either way.
"""
import struct
import sys
import zlib
from collections import Counter

CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # PNG colour type -> samples per pixel


def fail(msg, code=2):
    print(f"png_nonblank: {msg}")
    sys.exit(code)


def decode(path):
    data = open(path, "rb").read()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        fail(f"{path} is not a PNG file")
    pos, idat, palette, ihdr = 8, [], None, None
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", body)
        elif kind == b"PLTE":
            palette = [tuple(body[i : i + 3]) for i in range(0, len(body), 3)]
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    if ihdr is None:
        fail(f"{path} has no IHDR chunk")
    width, height, depth, ctype, _, _, interlace = ihdr
    if depth != 8 or interlace != 0 or ctype not in CHANNELS:
        fail(f"{path}: only 8-bit non-interlaced PNGs are supported "
             f"(depth {depth}, colour type {ctype}, interlace {interlace})")
    bpp = CHANNELS[ctype]
    raw = zlib.decompress(b"".join(idat))
    stride = width * bpp
    rows, prev = [], bytearray(stride)
    for y in range(height):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):  # undo the per-row filter (PNG spec, section 9)
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + ((a + b) >> 1)) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                line[i] = (line[i] + pred) & 255
            elif f != 0:
                fail(f"{path}: bad filter type {f} in row {y}")
        rows.append(bytes(line))
        prev = line
    counts = Counter()  # (r, g, b) -> number of pixels
    for line in rows:
        if ctype == 3:
            counts.update(palette[i] if palette else (i, i, i) for i in line)
        elif ctype in (0, 4):
            counts.update((v, v, v) for v in line[0::bpp])
        else:
            counts.update(zip(line[0::bpp], line[1::bpp], line[2::bpp]))
    return width, height, counts


def main():
    args = sys.argv[1:]
    if not args:
        fail("usage: png_nonblank.py FILE.png [--min-fraction F] [--expect-color #rrggbb ...]")
    path, min_fraction, expect = args[0], 0.01, []
    i = 1
    while i < len(args):
        if args[i] == "--min-fraction":
            min_fraction = float(args[i + 1])
        elif args[i] == "--expect-color":
            h = args[i + 1].lstrip("#")
            expect.append(tuple(int(h[k : k + 2], 16) for k in (0, 2, 4)))
        else:
            fail(f"unknown argument {args[i]}")
        i += 2
    width, height, counts = decode(path)
    total = width * height
    background, _ = counts.most_common(1)[0]
    differ = total - counts[background]
    fraction = differ / max(1, total)
    missing = [
        "#%02x%02x%02x" % e
        for e in expect
        if not any(all(abs(p[k] - e[k]) <= 8 for k in range(3)) for p in counts)
    ]
    bg = "#%02x%02x%02x" % background
    line = (f"png_nonblank: {width}x{height}, {differ} of {total} pixels ({100 * fraction:.2f}%) "
            f"differ from background {bg}, {len(counts)} distinct colours")
    if missing:
        line += "; missing colours " + " ".join(missing)
    print(line)
    sys.exit(0 if fraction >= min_fraction and not missing else 1)


if __name__ == "__main__":
    main()
