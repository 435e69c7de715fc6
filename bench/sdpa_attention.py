#!/usr/bin/env python3
"""Attention alone in PyTorch: F.scaled_dot_product_attention(is_causal=True) on CUDA, on the
shapes and with the FLOP convention of bench_cuda_attention (bench/cuda_attention_bench.cu), so
the two print comparable JSON lines on the same card. bench/README.md explains both.

Each (dtype, backend) pair in --backends is forced with torch.nn.attention.sdpa_kernel, so the
reported backend is the one that ran: bf16 with FLASH_ATTENTION (and CUDNN_ATTENTION), fp32 with
EFFICIENT_ATTENTION (flash and cuDNN take no fp32). A pair the installed PyTorch cannot run on a
shape is reported on stderr and left out. Tensors are made [B, S, H, D] (ftune's token-major
layout) and transposed to the [B, H, S, D] view SDPA takes, as HF models do.

FLOPs (causal): forward = 4 * B * Hq * S^2 * D / 2, backward = 2.5 x forward.
Times are medians of --iters iterations (torch.cuda.Event pairs) after --warmup untimed ones:
forward alone (autograd on), backward alone (torch.autograd.grad on a retained graph) and forward+backward.

    python3 bench/sdpa_attention.py [--seqs 1024,2048,4096,8192] [--heads 16:16,32:8]
                                    [--head-dim 128,64] [--backends bf16:flash,fp32:efficient]
    python3 bench/sdpa_attention.py --table FTUNE_LOG SDPA_LOG   # side-by-side TFLOP/s
"""
import argparse
import json
import statistics
import sys

BACKENDS = {"flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION",
            "cudnn": "CUDNN_ATTENTION", "math": "MATH"}
DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def int_list(s):
    return [int(x) for x in s.split(",") if x]


def head_pairs(s):
    out = []
    for p in s.split(","):
        q, kv = p.split(":")
        out.append((int(q), int(kv)))
    return out


def backend_list(s):
    out = []
    for p in s.split(","):
        dtype, backend = p.split(":")
        if dtype not in DTYPES or backend not in BACKENDS:
            raise argparse.ArgumentTypeError(f"unknown dtype:backend {p!r}")
        out.append((dtype, backend))
    return out


def skip(msg):
    # gpu-check reads a "[  SKIPPED ]" line as a skip (which it counts as a failure).
    print(f"[  SKIPPED ] sdpa_attention: {msg}")
    sys.exit(0)


def force_backend(torch, name):
    """A context manager that allows only SDPA backend `name`."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
        return sdpa_kernel([getattr(SDPBackend, BACKENDS[name])])
    except ImportError:  # PyTorch < 2.3
        if name == "cudnn":
            raise RuntimeError("this PyTorch has no cuDNN SDPA backend")
        return torch.backends.cuda.sdp_kernel(enable_flash=name == "flash",
                                              enable_mem_efficient=name == "efficient",
                                              enable_math=name == "math")


def median_ms(torch, fn, warmup, iters):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
              for _ in range(iters)]
    for start, end in events:
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return statistics.median(start.elapsed_time(end) for start, end in events)


def bench_shape(torch, args, dtype_name, backend, seq, hq, hkv, dim):
    F = torch.nn.functional
    dtype = getattr(torch, DTYPES[dtype_name])
    batch = max(1, args.tokens // seq)
    gen = torch.Generator(device="cuda").manual_seed(0)

    def rand(heads):  # [B, S, H, D] storage, [B, H, S, D] view; a leaf that wants grad
        t = torch.rand(batch, seq, heads, dim, device="cuda", dtype=torch.float32, generator=gen)
        return (t * 2 - 1).to(dtype).transpose(1, 2).detach().requires_grad_(True)

    q, k, v = rand(hq), rand(hkv), rand(hkv)
    dout = rand(hq).detach()
    gqa = "none"
    kwargs = {}
    if hq != hkv:
        gqa = "native"
        kwargs["enable_gqa"] = True

    def forward():
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, **kwargs)

    with force_backend(torch, backend):
        try:
            out = forward()
        except (RuntimeError, TypeError) as e:
            if not kwargs:
                raise
            # No native GQA here (older PyTorch, or this backend): time it on K/V expanded to
            # Hq heads beforehand. Same FLOPs; the dK/dV head reduction is not timed.
            gqa = "expanded"
            kwargs.clear()
            group = hq // hkv
            k = k.detach().repeat_interleave(group, dim=1).requires_grad_(True)
            v = v.detach().repeat_interleave(group, dim=1).requires_grad_(True)
            print(f"sdpa_attention: {dtype_name}/{backend} seq {seq} heads {hq}:{hkv}: no native "
                  f"GQA ({str(e).splitlines()[0][:120]}); K/V expanded", file=sys.stderr)
            out = forward()

        def fwd():  # with autograd on, as in training (efficient attention then keeps LSE)
            forward()

        def bwd():
            torch.autograd.grad(out, (q, k, v), dout, retain_graph=True)

        def fwd_bwd():
            torch.autograd.grad(forward(), (q, k, v), dout)

        fwd_ms = median_ms(torch, fwd, args.warmup, args.iters)
        bwd_ms = median_ms(torch, bwd, args.warmup, args.iters)
        fwd_bwd_ms = median_ms(torch, fwd_bwd, args.warmup, args.iters)
        grads = torch.autograd.grad(out, (q, k, v), dout)
    finite = bool(torch.isfinite(out).all()) and all(bool(torch.isfinite(g).all()) for g in grads)

    fwd_flops = 4.0 * batch * hq * seq * seq * dim / 2.0
    bwd_flops = 2.5 * fwd_flops

    def tflops(flops, ms):
        return round(flops / (ms * 1e-3) / 1e12, 3)

    return {"impl": "pytorch-sdpa", "dtype": dtype_name, "backend": backend, "seq": seq,
            "batch": batch, "q_heads": hq, "kv_heads": hkv, "head_dim": dim, "causal": True,
            "iters": args.iters, "fwd_ms": round(fwd_ms, 4), "bwd_ms": round(bwd_ms, 4),
            "fwd_bwd_ms": round(fwd_bwd_ms, 4), "fwd_tflops": tflops(fwd_flops, fwd_ms),
            "bwd_tflops": tflops(bwd_flops, bwd_ms),
            "fwd_bwd_tflops": tflops(fwd_flops + bwd_flops, fwd_bwd_ms), "gqa": gqa,
            "finite": finite, "gpu": torch.cuda.get_device_name(),
            "torch": torch.__version__}


def read_json_lines(path):
    rows = []
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                line = line.strip()
                if line.startswith("{"):
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError:
                        pass
    except OSError as e:
        print(f"sdpa_attention: cannot read {path}: {e}", file=sys.stderr)
    return rows


def print_table(paths):
    """Side-by-side forward/backward TFLOP/s, one row per shape, one column pair per
    implementation (impl dtype backend) found in the logs."""
    rows = [r for p in paths for r in read_json_lines(p) if "fwd_tflops" in r]
    if not rows:
        print("attention TFLOP/s: no results in " + ", ".join(paths))
        return
    shape = lambda r: (r["seq"], r["batch"], r["q_heads"], r["kv_heads"], r["head_dim"])
    label = lambda r: (f"ftune {r['dtype']}" if r["impl"] == "ftune"
                       else f"sdpa {r['dtype']} {r.get('backend', '?')}")
    impls = list(dict.fromkeys(label(r) for r in rows))
    table = {}
    for r in rows:
        table[(shape(r), label(r))] = r
    width = max(15, *(len(i) for i in impls))
    print("attention TFLOP/s, causal (fwd / bwd; FLOPs: fwd 2*B*H*S^2*D, bwd 2.5x fwd)")
    print(f"{'seq':>5} {'B':>3} {'heads':>6} {'D':>4}  " + "  ".join(f"{i:>{width}}" for i in impls))
    for s in sorted({shape(r) for r in rows}):
        cells = []
        for i in impls:
            r = table.get((s, i))
            cells.append(f"{r['fwd_tflops']:6.1f} / {r['bwd_tflops']:5.1f}" if r else "-")
        print(f"{s[0]:>5} {s[1]:>3} {f'{s[2]}:{s[3]}':>6} {s[4]:>4}  "
              + "  ".join(f"{c:>{width}}" for c in cells))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seqs", type=int_list, default=[1024, 2048, 4096, 8192])
    ap.add_argument("--heads", type=head_pairs, default=[(16, 16), (32, 8)],
                    help="q_heads:kv_heads pairs (default 16:16,32:8)")
    ap.add_argument("--head-dim", "--head-dims", type=int_list, default=[128, 64])
    ap.add_argument("--tokens", type=int, default=16384, help="batch = tokens / seq")
    ap.add_argument("--backends", type=backend_list,
                    default=[("bf16", "flash"), ("bf16", "cudnn"), ("fp32", "efficient")],
                    help="dtype:backend pairs, backend one of " + ",".join(BACKENDS))
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--table", nargs="+", metavar="LOG",
                    help="only print a TFLOP/s table from JSON-line logs (no torch needed)")
    args = ap.parse_args()
    if args.table:
        print_table(args.table)
        return 0

    try:
        import torch
    except ImportError as e:
        skip(f"no PyTorch ({e})")
    if not torch.cuda.is_available():
        skip("no CUDA device visible to PyTorch " + torch.__version__)
    torch.backends.cuda.matmul.allow_tf32 = False

    failures = measured = 0
    for seq in args.seqs:
        for hq, hkv in args.heads:
            for dim in args.head_dim:
                for dtype_name, backend in args.backends:
                    try:
                        row = bench_shape(torch, args, dtype_name, backend, seq, hq, hkv, dim)
                    except (RuntimeError, TypeError) as e:
                        msg = str(e).strip().splitlines()
                        print(f"sdpa_attention: {dtype_name}/{backend} cannot run seq {seq} heads "
                              f"{hq}:{hkv} head_dim {dim}: {msg[0][:200] if msg else type(e)}",
                              file=sys.stderr)
                        torch.cuda.empty_cache()
                        continue
                    print(json.dumps(row), flush=True)
                    measured += 1
                    failures += not row["finite"]
                    torch.cuda.empty_cache()
    if measured == 0:
        print("sdpa_attention: no (dtype, backend, shape) could run", file=sys.stderr)
        return 1
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
