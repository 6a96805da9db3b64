"""llm.c's CPU trainer (`train_gpt2.c`) on the configs of `bench_vs_torch.py`, as a third side.

`train_gpt2.c` takes its model shape from a checkpoint file and hard-codes its batch, sequence
length and number of steps, so for each config this writes, into a scratch directory:
- a random checkpoint in llm.c's format (header magic 20240326, version 3), with unit LayerNorm
  weights and zero biases (llm.c always has biases);
- token files in its format (magic 20240520) at the paths its `main` looks for;
- a copy of `train_gpt2.c` with B, T and the last step changed.

It compiles that copy against the checkout's `llmc/` headers the way llm.c's Makefile builds its
CPU trainer: `-Ofast -march=native -fopenmp -DOMP`, plus `-mno-avx512f` under `--isa avx2`.
Nothing of llm.c is kept in this repository: pass the path of your own checkout
(`git clone https://github.com/karpathy/llm.c`). Its step times are the `took N ms` of each
step's forward, backward and AdamW update. llm.c does no gradient clipping on CPU; the
difference is one pass over the gradients.

    python tools/llmc_bench.py ~/llm.c [--configs tiny,small,gpt2] [--threads 2] [--steps 6]
"""

import argparse
import os
import re
import shutil
import statistics
import subprocess
import tempfile

import numpy as np

# The lines of train_gpt2.c's main that are changed, and what they become.
EDITS = [("int B = 4;", "int B = {b};"), ("int T = 64;", "int T = {t};"), ("step <= 40;", "step <= {last};")]
WARMUP = 2  # steps left out of the median, as `gptrain bench --warmup 2`


def write_checkpoint(path, c):
    """A random GPT-2 of shape `c` in llm.c's checkpoint format (llm.c's parameter order)."""
    L, C, T, V = c["n_layer"], c["n_embd"], c["block_size"], c["vocab_size"]
    header = np.zeros(256, np.int32)
    header[:8] = [20240326, 3, T, V, L, c["n_head"], C, V]
    # (size, kind): wte, wpe, ln1 w/b, qkv w/b, attn proj w/b, ln2 w/b, fc w/b, mlp proj w/b, lnf w/b
    tensors = [(V * C, "w"), (T * C, "w"), (L * C, "1"), (L * C, "0"), (L * 3 * C * C, "w"), (L * 3 * C, "0"),
               (L * C * C, "w"), (L * C, "0"), (L * C, "1"), (L * C, "0"), (L * 4 * C * C, "w"), (L * 4 * C, "0"),
               (L * 4 * C * C, "w"), (L * C, "0"), (C, "1"), (C, "0")]
    rng = np.random.default_rng(0)
    with open(path, "wb") as f:
        f.write(header.tobytes())
        for n, kind in tensors:
            if kind == "w":
                a = rng.standard_normal(n, np.float32) * np.float32(0.02)
            else:
                a = np.full(n, 1.0 if kind == "1" else 0.0, np.float32)
            f.write(a.tobytes())


def write_tokens(path, n, vocab, seed):
    header = np.zeros(256, np.int32)
    header[:3] = [20240520, 1, n]
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(np.random.default_rng(seed).integers(0, min(vocab, 65536), n, dtype=np.uint16).tobytes())


def prepare(llmc, c, steps, isa=None):
    """Writes the files for config `c` and compiles the trainer; returns the directory to run it in."""
    path = os.path.join(llmc, "train_gpt2.c")
    if not os.path.isfile(path):
        raise SystemExit(f"error: no {path}; pass the directory of an llm.c checkout (git clone https://github.com/karpathy/llm.c)")
    src = open(path).read()
    for old, new in EDITS:
        if src.count(old) != 1:
            raise SystemExit(f"error: {llmc}/train_gpt2.c has no single `{old}` line to change; this script knows train_gpt2.c as of llm.c f1e2ace (2025)")
        src = src.replace(old, new.format(b=c["batch_size"], t=c["block_size"], last=WARMUP + steps - 1))
    work = tempfile.mkdtemp(prefix="llmc-")
    data = os.path.join(work, "dev", "data", "tinyshakespeare")
    os.makedirs(data)
    write_checkpoint(os.path.join(work, "gpt2_124M.bin"), c)
    bt = c["batch_size"] * c["block_size"]
    write_tokens(os.path.join(data, "tiny_shakespeare_train.bin"), 64 * bt + 1, c["vocab_size"], 1)
    write_tokens(os.path.join(data, "tiny_shakespeare_val.bin"), 8 * bt + 1, c["vocab_size"], 2)
    with open(os.path.join(work, "train_gpt2.c"), "w") as f:
        f.write(src)
    flags = ["-Ofast", "-march=native", "-fopenmp", "-DOMP", "-Wno-unused-result"] + (["-mno-avx512f"] if isa == "avx2" else [])
    cmd = ["cc", *flags, "-I", llmc, "train_gpt2.c", "-lm", "-o", "train_gpt2"]
    if subprocess.run(cmd, cwd=work).returncode != 0:
        shutil.rmtree(work)
        raise SystemExit(f"error: `{' '.join(cmd)}` failed (in a copy of {path}); llm.c's CPU build needs a C compiler with OpenMP")
    return work


def run(work, threads):
    """One run of the prepared trainer: the median of its step times after the warm-up steps."""
    out = subprocess.run(["./train_gpt2"], cwd=work, check=True, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS=str(threads))).stdout
    times = [float(ms) for ms in re.findall(r"^step \d+: train loss \S+ \(took ([0-9.]+) ms\)", out, re.M)]
    if len(times) <= WARMUP:
        raise SystemExit(f"error: llm.c printed {len(times)} step times; its output ends with:\n{out[-2000:]}")
    return {"ms_per_step": statistics.median(times[WARMUP:])}


def main():
    from bench_vs_torch import CONFIGS

    ap = argparse.ArgumentParser()
    ap.add_argument("llmc", help="an llm.c checkout")
    ap.add_argument("--configs", default="tiny,small,gpt2")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=6, help="timed steps after the warm-up steps")
    ap.add_argument("--isa", choices=["avx2"])
    a = ap.parse_args()
    for name in a.configs.split(","):
        work = prepare(a.llmc, CONFIGS[name], a.steps, a.isa)
        print(f"{name:<8} llm.c {run(work, a.threads)['ms_per_step']:.2f} ms/step", flush=True)
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
