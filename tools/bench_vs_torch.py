"""Side-by-side: gptrain vs the PyTorch reference of the same model, alternating A B A B ... in
one invocation with the same threads, on the configs of issue #4. Prints each side's median
ms/step and the median of the per-round ratios (PyTorch ms / gptrain ms, i.e. gptrain tokens/s
over PyTorch tokens/s; > 1 means gptrain is faster). Pairing each gptrain run with the PyTorch
run next to it cancels slow drifts of a shared machine.

    cargo build --release && python tools/bench_vs_torch.py [--rounds 5] [--threads 2] [--compile] [--configs tiny,small,gpt2] [--sdpa] [--linears] [--isa avx2] [--llmc ~/llm.c]

MFU is against gptrain's probe of this machine's FMA peak: the best it has seen by the config's
last round (each `gptrain bench` reports against the best seen before it); PyTorch's MFU is the
same model FLOPs over its own time. `--isa avx2` runs both sides as an
AVX2-only CPU would on an AVX-512 machine (GPTRAIN_ISA=avx2; ATEN_CPU_CAPABILITY, MKL and oneDNN
held to AVX2), with the peak probed in AVX2. `--llmc DIR` adds llm.c's CPU trainer from your
checkout at DIR as a third side of each round (`llmc_bench.py`: built here for each config).
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
GPTRAIN = os.path.join(ROOT, "target", "release", "gptrain")

CONFIGS = {
    "tiny": dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12, vocab_size=65, steps=20),
    "small": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, batch_size=8, vocab_size=65, steps=5),
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768, block_size=64, batch_size=4, vocab_size=50304, steps=3),
}


AVX2_ENV = {"GPTRAIN_ISA": "avx2", "ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
EXTRA_ENV = {}


def run_gptrain(c, threads, linears=False):
    sets = []
    for k in ("n_layer", "n_head", "n_embd", "block_size", "batch_size", "vocab_size"):
        sets += ["--set", f"{k}={c[k]}"]
    cmd = [GPTRAIN, "bench", "--json", "--steps", str(c["steps"]), "--warmup", "2", "--threads", str(threads), "--set", "bias=false", "--set", "dropout=0"] + sets + (["--linears"] if linears else [])
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True, env=dict(os.environ, **EXTRA_ENV)).stdout)


def run_torch(c, threads, compile_, sdpa=False, linears=False):
    cmd = [sys.executable, os.path.join(HERE, "torch_bench.py"), "--threads", str(threads), "--steps", str(c["steps"]), "--warmup", "2" if not compile_ else "3"]
    for k in ("n_layer", "n_head", "n_embd", "block_size", "batch_size", "vocab_size"):
        cmd += ["--" + k.replace("_", "-"), str(c[k])]
    if compile_:
        cmd.append("--compile")
    if sdpa:
        cmd.append("--sdpa")
    if linears:
        cmd.append("--linears")
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), **EXTRA_ENV)
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout.strip().splitlines()[-1])


def paired(g, other):
    """The other side's median ms/step, and the median of its per-round ratios to gptrain's
    (its ms over gptrain's, round by round: > 1 means gptrain is faster)."""
    return statistics.median(x["ms_per_step"] for x in other), statistics.median(b["ms_per_step"] / a["ms_per_step"] for a, b in zip(g, other))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--compile", action="store_true", help="also time torch.compile")
    ap.add_argument("--configs", default="tiny,small,gpt2")
    ap.add_argument("--linears", action="store_true", help="time only the linear layers' matmuls on both sides (the matmul libraries on these shapes)")
    ap.add_argument("--sdpa", action="store_true", help="PyTorch attention through scaled_dot_product_attention (nanoGPT's flash path)")
    ap.add_argument("--isa", choices=["avx2"], help="hold both sides to AVX2 (what an AVX2-only CPU would run)")
    ap.add_argument("--llmc", metavar="DIR", help="also time llm.c's CPU trainer (train_gpt2.c) from the llm.c checkout at DIR")
    a = ap.parse_args()
    if a.isa == "avx2":
        EXTRA_ENV.update(AVX2_ENV)
    if a.linears:
        return linears(a)
    if a.llmc:
        import llmc_bench  # (needs numpy)
    print(f"{'config':<8} {'gptrain ms':>11} {'torch ms':>10} {'ratio':>7} {'gptrain MFU':>12} {'torch MFU':>10} {'gptrain RSS':>12} {'torch RSS':>10}" + (f" {'compile ms':>11} {'ratio':>7}" if a.compile else "") + (f" {'llm.c ms':>10} {'ratio':>7}" if a.llmc else ""))
    peaks, isa = [], ""
    for name in a.configs.split(","):
        c = CONFIGS[name]
        g, t, tc, lc = [], [], [], []
        work = llmc_bench.prepare(a.llmc, c, c["steps"], a.isa) if a.llmc else None
        for _ in range(a.rounds):  # A B A B ...
            g.append(run_gptrain(c, a.threads))
            t.append(run_torch(c, a.threads, False, a.sdpa))
            if a.compile:
                tc.append(run_torch(c, a.threads, True, a.sdpa))
            if work:
                lc.append(llmc_bench.run(work, a.threads))
        gm = statistics.median(x["ms_per_step"] for x in g)
        tm, ratio = paired(g, t)
        # against the best peak of the rounds (a run's own MFU is against the best seen before it);
        # PyTorch's: the same model FLOPs over its time, round by round
        peak = max(x["peak_gflops"] for x in g)
        mfu = statistics.median(x["gflops"] / peak for x in g)
        tmfu = statistics.median(a["gflops"] * a["ms_per_step"] / b["ms_per_step"] / peak for a, b in zip(g, t))
        grss = max(x["peak_rss_bytes"] for x in g) / 2**20
        trss = max(x["peak_rss_bytes"] for x in t) / 2**20
        line = f"{name:<8} {gm:>11.2f} {tm:>10.2f} {ratio:>6.2f}x {mfu * 100:>11.1f}% {tmfu * 100:>9.1f}% {grss:>9.0f}MiB {trss:>7.0f}MiB"
        if a.compile:
            cm, cratio = paired(g, tc)
            line += f" {cm:>11.2f} {cratio:>6.2f}x"
        if work:
            lm, lratio = paired(g, lc)
            line += f" {lm:>10.2f} {lratio:>6.2f}x"
            shutil.rmtree(work)
        print(line, flush=True)
        peaks += [x["peak_gflops"] for x in g]
        isa = g[-1].get("isa", "")
    print(f"MFU against the best {isa} FMA peak gptrain's probe has seen on this machine by each config's last round (up to {max(peaks):.1f} GFLOP/s)", flush=True)


def linears(a):
    print(f"{'config':<8} {'gptrain ms':>11} {'torch ms':>10} {'ratio':>7} {'gptrain GFLOP/s':>16} {'torch GFLOP/s':>14}")
    for name in a.configs.split(","):
        c = CONFIGS[name]
        g, t = [], []
        for _ in range(a.rounds):  # A B A B ...
            g.append(run_gptrain(c, a.threads, linears=True))
            t.append(run_torch(c, a.threads, False, linears=True))
        gm = statistics.median(x["ms_per_step"] for x in g)
        tm, ratio = paired(g, t)
        gf, tf = (statistics.median(x["gflops"] for x in v) for v in (g, t))
        print(f"{name:<8} {gm:>11.2f} {tm:>10.2f} {ratio:>6.2f}x {gf:>16.1f} {tf:>14.1f}", flush=True)


if __name__ == "__main__":
    main()
