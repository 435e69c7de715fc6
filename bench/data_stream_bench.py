#!/usr/bin/env python3
"""Streaming data-preparation benchmark: peak memory and throughput of `ftune data prepare` on a
generated multi-GB instruction JSONL, against the size of the data.

Usage: bench/data_stream_bench.py [--mb 1024] [--ftune build/ftune] [--keep DIR]

It writes the JSONL (instruction format, garden-note-like records of varied length) to a temp
directory, runs `ftune data prepare` once to build the cache and once to reuse it, and samples
/proc/PID/status every 50 ms for the peak anonymous resident memory (what the process itself
holds) and the peak file-backed resident memory (mapped cache pages, which the kernel can drop).
"""
import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WORDS = ("soil water light sun shade compost mulch seed leaf root stem flower fruit prune harvest "
         "spring summer autumn winter frost drain feed pot bed row trellis pest aphid slug weed "
         "tomato basil bean pea kale leek onion garlic mint thyme sage chive rose lily fern").split()


def write_jsonl(path, target_bytes, seed=1):
    rng = random.Random(seed)
    written = 0
    with open(path, "w", encoding="utf-8") as f:
        while written < target_bytes:
            plant = rng.choice(WORDS).capitalize()
            n = rng.randint(20, 400)
            out = " ".join(rng.choice(WORDS) for _ in range(n)) + "."
            rec = {"instruction": f"How should I grow {plant}?", "output": out}
            if rng.random() < 0.3:
                rec["input"] = "In a small garden."
            line = json.dumps(rec) + "\n"
            f.write(line)
            written += len(line)
    return written


def read_status(pid):
    vals = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("RssAnon:", "RssFile:")):
                    k, v = line.split(":")
                    vals[k] = int(v.split()[0]) * 1024
    except OSError:
        pass
    return vals


def run(cmd):
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = {"RssAnon": 0, "RssFile": 0}
    while p.poll() is None:
        for k, v in read_status(p.pid).items():
            peak[k] = max(peak[k], v)
        time.sleep(0.05)
    out, err = p.communicate()
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{err}")
    return time.monotonic() - t0, peak, out.strip()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=float, default=1024)
    ap.add_argument("--ftune", default=os.path.join(ROOT, "build", "ftune"))
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--keep", help="directory to use (kept afterwards)")
    a = ap.parse_args()
    d = a.keep or tempfile.mkdtemp(prefix="ftune-stream-")
    os.makedirs(d, exist_ok=True)
    data = os.path.join(d, "train.jsonl")
    if not os.path.exists(data) or os.path.getsize(data) < a.mb * 1e6:
        t0 = time.monotonic()
        write_jsonl(data, int(a.mb * 1e6))
        print(f"wrote {os.path.getsize(data) / 1e6:.0f} MB of JSONL in {time.monotonic() - t0:.0f} s")
    recipe = os.path.join(d, "recipe.yaml")
    with open(recipe, "w") as f:
        f.write(f"model:\n  path: {ROOT}/configs/models/quickstart-base\n  init: random\n"
                f"data:\n  train: {data}\n  format: instruction\n  cache_dir: {d}/cache\n"
                f"train:\n  seq_len: 512\n  micro_batch_size: 8\nthreads: {a.threads}\n"
                f"output_dir: {d}/run\n")
    size = os.path.getsize(data)
    rows = []
    for label in ("build cache", "reuse cache"):
        secs, peak, out = run([a.ftune, "data", "prepare", recipe])
        rows.append((label, secs, peak))
        print(out)
    cache = sum(os.path.getsize(os.path.join(d, "cache", f)) for f in os.listdir(os.path.join(d, "cache")))
    print(f"\ndata {size / 1e6:.0f} MB JSONL, cache {cache / 1e6:.0f} MB, {a.threads} threads")
    print(f"{'run':<12} {'seconds':>8} {'MB/s':>7} {'peak anon MiB':>14} {'peak file MiB':>14}")
    for label, secs, peak in rows:
        print(f"{label:<12} {secs:>8.1f} {size / 1e6 / secs:>7.1f} {peak['RssAnon'] / 2**20:>14.0f}"
              f" {peak['RssFile'] / 2**20:>14.0f}")
    if not a.keep:
        subprocess.run(["rm", "-rf", d])


if __name__ == "__main__":
    main()
