#!/usr/bin/env python3
"""PyTorch eager CPU training-step benchmark: the baseline that `ftune bench` is compared to.

Builds a randomly initialised LlamaForCausalLM from the command-line shape, runs
forward (HF loss) + backward + AdamW step + zero_grad on random tokens, and prints one JSON
line with the median step time and derived throughput. The flags mirror `ftune bench`.
"""

import argparse
import json
import platform
import resource
import statistics
import sys
import time

import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--intermediate", type=int, default=1408)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=5, help="timed steps (after warmup)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps before measuring")
    p.add_argument("--tied", action=argparse.BooleanOptionalAction, default=True,
                   help="tie lm_head to the input embedding (default: tied)")
    p.add_argument("--attn", choices=("eager", "sdpa"), default="sdpa")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--preset", choices=("default", "llama-3.2-1b"), default="default",
                   help="named shape (as ftune bench --preset); explicit shape flags still win")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32",
                   help="bf16: weights and compute in bf16 (CUDA), fused AdamW")
    p.add_argument("--method", choices=("full", "lora"), default="full",
                   help="lora: PEFT adapters on every linear (all-linear), base frozen")
    p.add_argument("--lora-rank", type=int, default=16)
    args = p.parse_args(argv)
    if args.preset == "llama-3.2-1b":
        given = {a.split("=")[0] for a in argv if a.startswith("--")}
        shape = dict(hidden=2048, layers=16, heads=32, kv_heads=8, intermediate=8192,
                     vocab=128256, seq=2048, batch=1)
        for name, value in shape.items():
            if "--" + name.replace("_", "-") not in given:
                setattr(args, name, value)
        args.rope_theta = 500000.0
    else:
        args.rope_theta = 10000.0
    if args.hidden % args.heads != 0:
        p.error(f"--hidden {args.hidden} must be divisible by --heads {args.heads}")
    if args.heads % args.kv_heads != 0:
        p.error(f"--heads {args.heads} must be a multiple of --kv-heads {args.kv_heads}")
    for name in ("hidden", "layers", "heads", "kv_heads", "intermediate", "vocab", "seq",
                 "batch", "threads", "steps"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.warmup < 0:
        p.error("--warmup must be non-negative")
    return args


def count_params(model):
    """Returns (all unique parameters, parameters outside embed_tokens and lm_head)."""
    total = 0
    nonembed = 0
    for name, p in model.named_parameters():  # tied weights are listed once
        total += p.numel()
        if not (name.startswith("model.embed_tokens.") or name.startswith("lm_head.")):
            nonembed += p.numel()
    return total, nonembed


def flops_per_step(nonembed, layers, heads, head_dim, seq, tokens):
    # Training FLOPs in the PaLM-appendix convention, so ftune bench can use the same formula:
    #   per token: 6 * N_nonembed            (2 forward + 4 backward FLOPs per weight)
    #            + 12 * L * H * Q * T        (QK^T and PV: 2 matmuls x 2 FLOPs x 3 for fwd+bwd,
    #                                         full T x T scores, i.e. causal masking not credited)
    # N_nonembed excludes embed_tokens and lm_head, so the vocab projection's 6*V*hidden
    # FLOPs per token are not counted (see flops_per_step_incl_head).
    return 6 * nonembed * tokens + 12 * layers * heads * head_dim * seq * tokens


def flops_per_step_frozen(nonembed, layers, heads, head_dim, seq, tokens):
    # A frozen base skips the weight-gradient matmuls: 4 instead of 6 FLOPs per weight, as in
    # ftune's flops_per_token(..., frozen_base=true). Adapters are not counted.
    return 4 * nonembed * tokens + 12 * layers * heads * head_dim * seq * tokens


def main(argv):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    head_dim = args.hidden // args.heads
    config = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        head_dim=head_dim,
        max_position_embeddings=args.seq,
        tie_word_embeddings=args.tied,
        rope_theta=args.rope_theta,
        use_cache=False,
    )
    dev = torch.device(args.device)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("pytorch_step: --device cuda but torch sees no GPU")
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    model = LlamaForCausalLM._from_config(config, attn_implementation=args.attn,
                                          dtype=dtype).to(dev)
    if args.method == "lora":
        from peft import LoraConfig, get_peft_model  # imported only when asked for

        model = get_peft_model(model, LoraConfig(r=args.lora_rank, lora_alpha=2 * args.lora_rank,
                                                 target_modules="all-linear", lora_dropout=0.0,
                                                 task_type="CAUSAL_LM"))
    model.train()
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=1e-4, fused=args.device == "cuda")

    n_params, n_nonembed = count_params(model.get_base_model() if args.method == "lora" else model)
    tokens = args.batch * args.seq
    input_ids = torch.randint(0, args.vocab, (args.batch, args.seq), dtype=torch.int64).to(dev)

    def step():
        out = model(input_ids=input_ids, labels=input_ids, use_cache=False)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return out.loss.item()

    for _ in range(args.warmup):
        step()
    times = []
    losses = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        losses.append(step())  # .item() synchronises, so the timer covers the whole step
        times.append(time.perf_counter() - t0)

    step_s = statistics.median(times)
    fpt = flops_per_step_frozen if args.method == "lora" else flops_per_step
    flops = fpt(n_nonembed, args.layers, args.heads, head_dim, args.seq, tokens)
    head_flops = 6 * args.vocab * args.hidden * tokens
    peak_device_mb = (torch.cuda.max_memory_allocated() / 2**20) if args.device == "cuda" else 0.0
    # ru_maxrss is in KiB on Linux.
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0

    result = {
        "impl": "pytorch",
        "method": args.method,
        "device": args.device,
        "dtype": args.dtype,
        "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None,
        "peak_device_mb": round(peak_device_mb, 1),
        "trained_params": sum(p.numel() for p in trained),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "attn": args.attn,
        "threads": args.threads,
        "shape": {
            "hidden": args.hidden,
            "layers": args.layers,
            "heads": args.heads,
            "kv_heads": args.kv_heads,
            "head_dim": head_dim,
            "intermediate": args.intermediate,
            "vocab": args.vocab,
            "seq": args.seq,
            "batch": args.batch,
            "tied": args.tied,
        },
        "params": n_params,
        "params_nonembed": n_nonembed,
        "tokens_per_step": tokens,
        "steps": args.steps,
        "warmup": args.warmup,
        "step_s": step_s,
        "step_s_min": min(times),
        "step_s_max": max(times),
        "tokens_per_s": tokens / step_s,
        "flops_per_step": flops,
        "gflops_per_s": flops / step_s / 1e9,
        "gflops_per_s_incl_head": (flops + head_flops) / step_s / 1e9,
        "loss_first": losses[0] if losses else None,
        "loss_last": losses[-1] if losses else None,
        "peak_rss_mb": round(peak_rss_mb, 1),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
