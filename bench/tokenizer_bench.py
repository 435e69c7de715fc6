#!/usr/bin/env python3
"""Single-thread tokenizer throughput: Hugging Face tokenizers vs `ftune tokenize`.

Builds a corpus of about --mb megabytes, one text per line, by mixing the lines of
data/pretrain/train.jsonl with the tokenizer fixture corpora (code, CJK, emoji, accents), then
for each tokenizer times

  hf_batch  Tokenizer.encode_batch over all lines, one thread (RAYON_NUM_THREADS=1,
            TOKENIZERS_PARALLELISM=false)
  hf_loop   Tokenizer.encode line by line
  ftune     `ftune tokenize TOKENIZER --file CORPUS` as a subprocess writing to a file, minus
            the same command on an empty file (process start and tokenizer loading)

checks that ftune's ids equal tokenizers' for every line, and prints one JSON line per
tokenizer. MB/s counts 10^6 bytes of UTF-8 input per second; each time is the best of --reps.

The fixture tokenizers have vocabularies of a few hundred tokens, so they emit far more tokens
per byte than real ones. --train-vocab (default 32000) therefore also trains two tokenizers of
that size on part of the corpus: trained_llama2 (the Llama 2 layout of llama2_style) and
trained_llama3 (the Llama 3 split + ByteLevel of llama3_style).
"""

import os

# Both must be set before tokenizers is imported: its thread pool reads them once.
os.environ["RAYON_NUM_THREADS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import tokenizers  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures", "tokenizer")
sys.path.insert(0, FIXTURES)
import make_fixtures  # noqa: E402  (the fixture corpora, cases and trainers)
DEFAULT_TOKENIZERS = ["llama2_style", "metaspace_style", "llama3_style"]


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokenizer", action="append",
                   help="fixture name under tests/fixtures/tokenizer, or a model directory / "
                        "tokenizer.json (repeatable; default: %s)" % ", ".join(DEFAULT_TOKENIZERS))
    p.add_argument("--ftune", help="the ftune binary (default: build/ftune, then PATH)")
    p.add_argument("--mb", type=float, default=5.0, help="corpus size in MB (10^6 bytes)")
    p.add_argument("--reps", type=int, default=3, help="timed runs of each; the best counts")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keep", help="also write the corpus to this path")
    p.add_argument("--train-vocab", type=int, default=32000,
                   help="vocabulary of the trained_* tokenizers (0: skip them)")
    return p.parse_args(argv)


def find_ftune(arg):
    if arg:
        return arg
    local = os.path.join(ROOT, "build", "ftune")
    if os.access(local, os.X_OK):
        return local
    found = shutil.which("ftune")
    if not found:
        sys.exit("tokenizer_bench: ftune not found; build it and pass --ftune PATH")
    return found


def source_lines():
    """(pretrain lines, fixture lines): non-empty lines without carriage returns."""
    def lines_of(text):
        return [line for line in text.replace("\r", "").split("\n") if line.strip()]

    pretrain = []
    with open(os.path.join(ROOT, "data", "pretrain", "train.jsonl"), encoding="utf-8") as f:
        for row in f:
            pretrain += lines_of(json.loads(row)["text"])
    fixture = []
    for text in make_fixtures.CORPUS + make_fixtures.CASES + make_fixtures.SP_CASES:
        fixture += lines_of(text)
    return pretrain, fixture


def build_corpus(target_bytes, seed):
    """Lines of 1-4 random source lines joined by a space, 85% English stories, until the
    target size: few lines repeat, so whole-line caches do not flatter either side."""
    pretrain, fixture = source_lines()
    rng = random.Random(seed)
    lines, size = [], 0
    while size < target_bytes:
        parts = [rng.choice(fixture if rng.random() < 0.15 else pretrain)
                 for _ in range(rng.randint(1, 4))]
        line = " ".join(parts)
        lines.append(line)
        size += len(line.encode("utf-8")) + 1
    return lines


def train_tokenizers(lines, vocab_size, workdir):
    """{name: directory} of the two tokenizers trained on the first 2 MB of the corpus."""
    sample, size = [], 0
    for line in lines:
        sample.append(line)
        size += len(line) + 1
        if size > 2_000_000:
            break
    out = {}
    j = make_fixtures.to_llama2_layout(
        make_fixtures.train_sp("always", vocab_size, corpus=sample, limit_alphabet=1000))
    out["trained_llama2"] = j
    from tokenizers import Regex, decoders, models, pre_tokenizers, processors, trainers
    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(make_fixtures.LLAMA3_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.train_from_iterator(sample, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|begin_of_text|>", "<|end_of_text|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    out["trained_llama3"] = json.loads(tok.to_str())
    dirs = {}
    for name, tok_json in out.items():
        path = os.path.join(workdir, name)
        os.makedirs(path)
        with open(os.path.join(path, "tokenizer.json"), "w", encoding="utf-8") as f:
            json.dump(tok_json, f, ensure_ascii=False)
        dirs[name] = path
    return dirs


def resolve_tokenizer(name):
    path = os.path.join(FIXTURES, name) if os.sep not in name and not os.path.exists(name) \
        else name
    file = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
    if not os.path.isfile(file):
        sys.exit(f"tokenizer_bench: no tokenizer.json at {path}")
    return path, file


def best_of(reps, fn, setup=lambda: None):
    """Best time of fn(setup()) over reps runs; setup is not timed."""
    best, result = float("inf"), None
    for _ in range(reps):
        arg = setup()
        t0 = time.perf_counter()
        result = fn(arg)
        best = min(best, time.perf_counter() - t0)
    return best, result


def run_ftune(ftune, tok_path, input_path, out_path):
    with open(out_path, "wb") as out:
        subprocess.run([ftune, "tokenize", tok_path, "--file", input_path], stdout=out,
                       check=True)


def bench_one(name, lines, corpus_path, empty_path, ftune, reps, workdir, path=None):
    tok_path, tok_file = resolve_tokenizer(path or name)
    nbytes = sum(len(line.encode("utf-8")) + 1 for line in lines)

    # A freshly loaded tokenizer for every run: tokenizers keeps a word cache in the object,
    # and each ftune run is a new process, so both start cold.
    def load():
        return Tokenizer.from_file(tok_file)

    hf_batch_s, encs = best_of(
        reps, lambda tok: tok.encode_batch(lines, add_special_tokens=False), load)
    hf_ids = [e.ids for e in encs]
    del encs
    hf_loop_s, _ = best_of(
        reps, lambda tok: [tok.encode(line, add_special_tokens=False).ids for line in lines],
        load)

    out_path = os.path.join(workdir, "ids.txt")
    startup_s, _ = best_of(reps, lambda _: run_ftune(ftune, tok_path, empty_path, out_path))
    ftune_total_s, _ = best_of(reps,
                               lambda _: run_ftune(ftune, tok_path, corpus_path, out_path))
    ftune_s = max(ftune_total_s - startup_s, 1e-9)

    with open(out_path, encoding="utf-8") as f:
        ft_ids = [json.loads(row) for row in f]
    mismatched = sum(a != b for a, b in zip(ft_ids, hf_ids)) + abs(len(ft_ids) - len(hf_ids))

    mb = nbytes / 1e6
    return {
        "tokenizer": name,
        "corpus_bytes": nbytes,
        "corpus_lines": len(lines),
        "vocab_size": Tokenizer.from_file(tok_file).get_vocab_size(),
        "tokens": sum(len(ids) for ids in hf_ids),
        "ids_identical": mismatched == 0,
        "mismatched_lines": mismatched,
        "hf_batch_mb_s": round(mb / hf_batch_s, 2),
        "hf_loop_mb_s": round(mb / hf_loop_s, 2),
        "ftune_mb_s": round(mb / ftune_s, 2),
        "ratio_ftune_vs_hf_batch": round(hf_batch_s / ftune_s, 2),
        "ratio_ftune_vs_hf_loop": round(hf_loop_s / ftune_s, 2),
        "hf_batch_s": round(hf_batch_s, 3),
        "hf_loop_s": round(hf_loop_s, 3),
        "ftune_s": round(ftune_s, 3),
        "ftune_startup_s": round(startup_s, 3),
        "reps": reps,
        "tokenizers_version": tokenizers.__version__,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
    }


def main(argv):
    args = parse_args(argv)
    ftune = find_ftune(args.ftune)
    lines = build_corpus(int(args.mb * 1e6), args.seed)
    with tempfile.TemporaryDirectory(prefix="tokbench-") as workdir:
        corpus_path = os.path.join(workdir, "corpus.txt")
        empty_path = os.path.join(workdir, "empty.txt")
        with open(corpus_path, "w", encoding="utf-8", newline="\n") as f:
            f.write("\n".join(lines) + "\n")
        open(empty_path, "w").close()
        if args.keep:
            shutil.copyfile(corpus_path, args.keep)
        runs = [(name, None) for name in args.tokenizer or DEFAULT_TOKENIZERS]
        if args.train_vocab:
            runs += list(train_tokenizers(lines, args.train_vocab, workdir).items())
        failed = False
        for name, path in runs:
            result = bench_one(name, lines, corpus_path, empty_path, ftune, args.reps, workdir,
                               path)
            failed |= not result["ids_identical"]
            print(json.dumps(result), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
