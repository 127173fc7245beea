"""Memory and speed of data preparation and training as the corpus grows (20 MB, 200 MB, 1 GB).

For each size a generated English-like corpus (deterministic pseudo-words, files of <= 100 MB) is
prepared with ``python -m famlab.data.prepare`` (bytes tokenizer) and then trained on for a few
steps with ``python train.py`` (tiny model), each in its own subprocess whose peak RSS is read
from ``os.wait4`` (the largest process of its tree, tokenizing workers included). Tokenization
throughput per process (one process, no pool) is timed in this process for bytes, chars and BPE
on the first 20 MB.

    python benchmarks/data.py [--sizes 20,200,1000] [--num-proc 2] [--steps 5] [--workdir DIR] [--keep]

Last line: JSON with ``rss_1g_over_20m`` (largest over smallest size, preparation and training
each; target <= 1.5), tokenization MB/s per process, and the CPU it ran on.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MB = 1_000_000
FILE_MB = 100


def cpu_info() -> dict:
    info = {"machine": platform.machine(), "cpus": os.cpu_count()}
    try:
        text = Path("/proc/cpuinfo").read_text()
        for line in text.splitlines():
            if line.startswith("model name") and "model" not in info:
                info["model"] = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                info["isa"] = sorted(flags & {"sse4_2", "avx", "avx2", "avx512f", "avx512bw", "sha_ni", "bmi2"})
                break
    except OSError:
        info["model"] = platform.processor()
    return info


def make_blocks(n: int = 16, size: int = MB) -> list[str]:
    """``n`` distinct ~1 MB blocks of sentences over a 5,000-word pseudo-English vocabulary."""
    rng = random.Random(0)
    syll = ["ta", "re", "mo", "ni", "ka", "lo", "ve", "shi", "an", "or", "el", "um", "qu", "ex", "pri", "st"]
    words = ["".join(rng.choice(syll) for _ in range(rng.randint(1, 4))) for _ in range(5000)]
    weights = [1 / (i + 1) for i in range(len(words))]  # Zipf-like
    blocks = []
    for b in range(n):
        out, total = [], 0
        while total < size:
            sent = " ".join(rng.choices(words, weights, k=rng.randint(5, 20))).capitalize() + ". "
            if rng.random() < 0.1:
                sent += "\n"
            out.append(sent)
            total += len(sent)
        blocks.append("".join(out))
    return blocks


def write_corpus(root: Path, size_mb: int, blocks: list[str]) -> Path:
    rng = random.Random(size_mb)
    root.mkdir(parents=True, exist_ok=True)
    left = size_mb
    for i in range((size_mb + FILE_MB - 1) // FILE_MB):
        n = min(FILE_MB, left)
        with open(root / f"part{i:03d}.txt", "w", encoding="utf-8") as f:
            for _ in range(n):
                f.write(rng.choice(blocks))
        left -= n
    return root


def run_measured(cmd: list[str], env: dict) -> dict:
    """Run ``cmd``; wall seconds and peak RSS (MB) of its largest process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    chunks = {"out": [], "err": []}
    readers = [
        threading.Thread(target=lambda s=s, k=k: chunks[k].append(s.read()))
        for s, k in ((proc.stdout, "out"), (proc.stderr, "err"))
    ]
    for r in readers:
        r.start()
    _, status, usage = os.wait4(proc.pid, 0)
    for r in readers:
        r.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    out, err = b"".join(chunks["out"]).decode(), b"".join(chunks["err"]).decode()
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{err[-3000:]}")
    return {"seconds": round(time.perf_counter() - t0, 2), "rss_mb": round(usage.ru_maxrss / 1024, 1), "stdout": out}


def tokenize_throughput(corpus_dir: Path, mb: int = 20) -> dict:
    sys.path.insert(0, str(REPO / "src"))
    from famlab.data.corpora import TextFiles
    from famlab.data.preparation import _batches
    from famlab.data.tokenizers import build_tokenizer

    docs, n = [], 0
    for d in TextFiles(str(corpus_dir)).documents():
        docs.append(d)
        n += len(d)
        if n >= mb * MB:
            break
    nbytes = sum(len(d.encode("utf-8")) for d in docs)
    out = {}
    for kind, extra in (("bytes", {}), ("chars", {}), ("bpe", {"vocab_size": 4096})):
        tok = build_tokenizer(kind, **extra)
        if tok.needs_fit:
            tok.fit("".join(docs)[: 2 * MB])
        t0 = time.perf_counter()
        for batch, _ in _batches(iter(docs)):
            tok.encode_many(batch)
        out[kind] = round(nbytes / MB / (time.perf_counter() - t0), 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="20,200,1000", help="corpus sizes in MB")
    ap.add_argument("--num-proc", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    work = Path(args.workdir or tempfile.mkdtemp(prefix="famlab-data-bench-"))
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO / "src"),
        "OMP_NUM_THREADS": "1",
        "WANDB_MODE": "offline",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "FAMLAB_CACHE": str(work / "cache"),
    }
    blocks = make_blocks()
    results = {}
    try:
        for size in sizes:
            corpus = write_corpus(work / f"corpus-{size}mb", size, blocks)
            data = [
                "data=text_files",
                f"data.corpus.path={corpus}",
                "data.tokenizer.kind=bytes",
                f"data.cache_dir={work / 'cache'}",
                f"data.num_proc={args.num_proc}",
            ]
            prep = run_measured([sys.executable, "-m", "famlab.data.prepare", *data], env)
            train = run_measured(
                [
                    sys.executable,
                    "train.py",
                    *data,
                    "model=tiny",
                    f"trainer.max_steps={args.steps}",
                    f"trainer.val_check_interval={args.steps}",
                    "scheduler=constant",
                    "logger=csv",
                    "callbacks.progress_bar=null",
                    "data.val_batches=2",
                    "threads=1",
                    f"out_root={work / 'runs'}",
                    f"run_name=r{size}",
                ],
                env,
            )
            results[size] = {
                "prepare_s": prep["seconds"],
                "prepare_rss_mb": prep["rss_mb"],
                "prepare_mb_per_s": round(size / prep["seconds"], 1),
                "train_s": train["seconds"],
                "train_rss_mb": train["rss_mb"],
            }
            print(
                f"{size:>5} MB: prepare {prep['seconds']:7.1f} s, peak RSS {prep['rss_mb']:7.1f} MB | "
                f"train {args.steps} steps {train['seconds']:6.1f} s, peak RSS {train['rss_mb']:7.1f} MB",
                flush=True,
            )
            shutil.rmtree(work / "cache", ignore_errors=True)  # the next size starts from nothing
        rates = tokenize_throughput(work / f"corpus-{sizes[0]}mb")
        print("tokenization MB/s per process: " + ", ".join(f"{k} {v}" for k, v in rates.items()))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    lo, hi = results[min(sizes)], results[max(sizes)]
    ratio = {
        "prepare": round(hi["prepare_rss_mb"] / lo["prepare_rss_mb"], 3),
        "train": round(hi["train_rss_mb"] / lo["train_rss_mb"], 3),
    }
    summary = {
        "rss_1g_over_20m": ratio,
        "rss_target_met": max(ratio.values()) <= 1.5,
        "num_proc": args.num_proc,
        "tokenize_mb_per_s_per_process": rates,
        "per_size": results,
    }
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from machine import record  # noqa: E402  (benchmarks/machine.py)

    record("data", summary)
    print(
        json.dumps(
            {
                "rss_1g_over_20m": ratio,
                "rss_target_met": max(ratio.values()) <= 1.5,
                "sizes_mb": [min(sizes), max(sizes)],
                "tokenize_mb_per_s_per_process": rates,
                "num_proc": args.num_proc,
                "per_size": results,
                "cpu": cpu_info(),
            }
        )
    )


if __name__ == "__main__":
    main()
