#!/usr/bin/env python3
"""Slims a fat CUDA shared library (NCCL) to the device code of the SMs kept, without changing
any size or offset in the ELF file, so that the rest compresses to almost nothing. Used by
scripts/nccl-slim to carry a newer NCCL (two ranks on one GPU need 2.30+) to a GPU machine whose
own is older, within the device tool's 64 MiB.

Fatbin container (little endian, as observed in libnccl.so.2 2.32.3):
  u32 magic 0xBA55ED50, u16 version, u16 header_size, u64 entries_size
Entry header (header_size 64/96/112/120):
  +0  u16 kind (1=PTX, 2=ELF cubin)   +2 u16 version
  +4  u32 header_size                  +8 u64 padded payload size
  +16 u32 payload size (compressed)    +28 u32 SM (75, 80, 90, 100, ...)
  +40 u64 flags (zstd payload)         +56 u64 uncompressed size
The payload follows the header.

A dropped entry keeps its header; its payload becomes a valid zstd frame expanding to the
recorded size (a 208-byte stub ELF with the original ELF header, then zeros) padded by a
skippable frame to the stored size, so tools that decompress every entry still work (plain zeros
make cuobjdump fail). The runtime picks an entry by SM, so dropped ones are never chosen on a
kept SM. `--zero-all-in __nv_relfatbin` also empties the per-object images that device linking
consumed (the loaded images are the linked ones in .nv_fatbin); `--zero-debug` zeroes .debug_*.

  nccl_slim.py libnccl.so.2 out.so.2 --keep 90 --zero-all-in __nv_relfatbin --zero-debug
(needs the zstd CLI; writes OUT.ranges, the byte ranges rewritten)
"""
import argparse, struct, sys, collections

MAGIC = 0xBA55ED50

def sections(data):
    shoff, = struct.unpack_from('<Q', data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from('<HHH', data, 0x3A)
    shs = []
    for i in range(shnum):
        name, typ, flags, addr, off, size = struct.unpack_from('<IIQQQQ', data, shoff + i * shentsize)
        shs.append([name, typ, flags, addr, off, size])
    stroff = shs[shstrndx][4]
    out = {}
    for name, typ, flags, addr, off, size in shs:
        end = data.index(b'\0', stroff + name)
        out[data[stroff + name:end].decode()] = (typ, off, size)
    return out

def walk(data, off, size):
    """yield (container_off, entry_off, kind, header_size, payload_size, sm, flags)"""
    p, end = off, off + size
    while p < end:
        if p + 16 > end:
            break
        magic, ver, hs, sz = struct.unpack_from('<IHHQ', data, p)
        if magic != MAGIC:
            # allow zero alignment padding between containers
            if data[p:p + 8] == b'\0' * 8:
                p += 8
                continue
            raise ValueError('bad fatbin magic at 0x%x' % p)
        q, e = p + hs, p + hs + sz
        while q < e:
            kind, ev, ehs, psz = struct.unpack_from('<HHIQ', data, q)
            sm, = struct.unpack_from('<I', data, q + 28)
            fl, = struct.unpack_from('<Q', data, q + 40)
            yield p, q, kind, ehs, psz, sm, fl
            q += ehs + psz
        if q != e:
            raise ValueError('entry walk overran container at 0x%x' % p)
        p = e

ZSTD_MAGIC = b'\x28\xb5\x2f\xfd'

def stub_elf(orig_payload):
    """Minimal valid cubin-like ELF: the original ELF header (keeps e_flags /
    arch), no program headers, sections: NULL + .shstrtab only."""
    import subprocess
    d = subprocess.run(['zstd', '-dc'], input=orig_payload, capture_output=True).stdout
    h = bytearray(d[:64])
    if len(h) < 64 or h[:4] != b'\x7fELF':
        return b''
    strtab = b'\0.shstrtab\0'
    strtab += bytes(-len(strtab) % 8)
    shoff = 64 + len(strtab)
    struct.pack_into('<QQ', h, 0x20, 0, shoff)       # e_phoff, e_shoff
    struct.pack_into('<HHHHHH', h, 0x34, 64, 0x38, 0, 0x40, 2, 1)
    sh0 = bytes(64)
    # name, type=SHT_STRTAB, flags, addr, offset, size, link, info, align, entsize
    sh1 = struct.pack('<IIQQQQIIQQ', 1, 3, 0, 0, 64, 11, 0, 0, 1, 0)
    return bytes(h) + strtab + sh0 + sh1

def zero_frame(usz, total, prefix=b''):
    """zstd frame decoding to `prefix` + zero bytes (usz bytes in all), padded
    with a skippable frame so that the result is exactly `total` bytes long."""
    fr = bytearray(ZSTD_MAGIC)
    fr.append(0xE0)                      # FCS 8 bytes, single segment, no checksum
    fr += struct.pack('<Q', usz)
    prefix = prefix[:usz]
    left = usz - len(prefix)
    if prefix:
        fr += ((1 if left == 0 else 0) | (len(prefix) << 3)).to_bytes(3, 'little') + prefix  # raw block
    if usz == 0:
        fr += (1).to_bytes(3, 'little')  # last, raw, size 0
    while left > 0:
        n = min(left, 128 * 1024)
        left -= n
        hdr = (1 if left == 0 else 0) | (1 << 1) | (n << 3)   # RLE block
        fr += hdr.to_bytes(3, 'little') + b'\0'
    rest = total - len(fr)
    if rest < 8:
        raise ValueError('no room for skippable frame')
    fr += struct.pack('<II', 0x184D2A50, rest - 8) + bytes(rest - 8)
    assert len(fr) == total
    return bytes(fr)

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('inp'); ap.add_argument('out')
    ap.add_argument('--keep', default='90', help='comma list of SM numbers to keep (cubin and PTX)')
    ap.add_argument('--sections', default='.nv_fatbin,__nv_relfatbin')
    ap.add_argument('--zero-all-in', default='', help='sections whose entries are all zeroed')
    ap.add_argument('--raw-zero', action='store_true', help='plain zeros instead of a valid zero zstd frame')
    ap.add_argument('--zero-debug', action='store_true', help='also zero non-alloc .debug_* sections')
    a = ap.parse_args()
    keep = {int(x) for x in a.keep.split(',') if x}
    data = bytearray(open(a.inp, 'rb').read())
    secs = sections(data)
    zero_all = set(x for x in a.zero_all_in.split(',') if x)
    stats = collections.Counter()
    zeroed = 0
    ranges = []
    for sname in a.sections.split(','):
        if sname not in secs:
            print('no section', sname); continue
        typ, off, size = secs[sname]
        for cp, q, kind, ehs, psz, sm, fl in walk(data, off, size):
            k = ('PTX' if kind == 1 else 'ELF' if kind == 2 else 'K%d' % kind)
            keepit = sm in keep and sname not in zero_all
            stats[(sname, k, sm, 'kept' if keepit else 'zeroed')] += 1
            if not keepit:
                s = q + ehs
                csz, = struct.unpack_from('<I', data, q + 16)
                usz, = struct.unpack_from('<Q', data, q + 56)
                is_zstd = bytes(data[s:s + 4]) == ZSTD_MAGIC
                prefix = stub_elf(bytes(data[s:s + csz])) if (is_zstd and kind == 2 and not a.raw_zero) else b''
                data[s:s + psz] = bytes(psz)
                if is_zstd and not a.raw_zero:
                    # keep the entry decompressible: a valid zstd frame that
                    # expands to usz zero bytes, then a skippable frame that
                    # fills the rest of the stored (compressed) size exactly.
                    fr = zero_frame(usz, csz, prefix)
                    data[s:s + csz] = fr
                zeroed += psz
                ranges.append((s, s + psz))
    if a.zero_debug:
        for sname, (typ, off, size) in secs.items():
            if sname.startswith('.debug_'):
                data[off:off + size] = bytes(size)
                zeroed += size
                ranges.append((off, off + size))
                print('zeroed', sname, size)
    for k, v in sorted(stats.items()):
        print(*k, v)
    print('bytes zeroed', zeroed)
    open(a.out, 'wb').write(data)
    with open(a.out + '.ranges', 'w') as f:
        for s, e in ranges:
            f.write('%d %d\n' % (s, e))

if __name__ == '__main__':
    main()
