"""Side-by-side: gptrain vs the PyTorch reference of the same model, alternating A B A B ... in
one invocation with the same threads, on the configs of issue #4. Prints each side's median
ms/step and the median of the per-round ratios (PyTorch ms / gptrain ms, i.e. gptrain tokens/s
over PyTorch tokens/s; > 1 means gptrain is faster). Pairing each gptrain run with the PyTorch
run next to it cancels slow drifts of a shared machine.

    cargo build --release && python tools/bench_vs_torch.py [--rounds 5] [--threads 2] [--compile] [--configs tiny,small,gpt2] [--sdpa] [--linears] [--isa avx2|avx512bf16] [--dtype bfloat16|float16]

MFU is against gptrain's probe of this machine's FMA peak: the best it has seen by the config's
last round (each `gptrain bench` reports against the best seen before it); PyTorch's MFU is the
same model FLOPs over its own time. `--isa avx2` runs both sides as an
AVX2-only CPU would on an AVX-512 machine (GPTRAIN_ISA=avx2; ATEN_CPU_CAPABILITY, MKL and oneDNN
held to AVX2), with the peak probed in AVX2; `--isa avx512bf16` holds both to AVX-512 BF16 without
AMX tiles (GPTRAIN_ISA=avx512bf16, ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16).

`--dtype bfloat16` (or float16) runs gptrain with `dtype` set and PyTorch under CPU autocast (its
mixed precision), and adds gptrain's own float32 as a third side: the columns then give gptrain's
mixed precision against PyTorch's, and against gptrain's fp32 (`own fp32` ratio: fp32 ms over
mixed ms). MFU is then against the peak of that dtype.

llm.c is compared through its published figures (PERFORMANCE.md keeps the runs measured here
earlier): this repository builds no other project's code.
"""

import argparse
import json
import os
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
BF16_NO_AMX_ENV = {"GPTRAIN_ISA": "avx512bf16", "ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}
EXTRA_ENV = {}


def run_gptrain(c, threads, linears=False, dtype="float32"):
    sets = ["--set", f"dtype={dtype}"]
    for k in ("n_layer", "n_head", "n_embd", "block_size", "batch_size", "vocab_size"):
        sets += ["--set", f"{k}={c[k]}"]
    cmd = [GPTRAIN, "bench", "--json", "--steps", str(c["steps"]), "--warmup", "2", "--threads", str(threads), "--set", "bias=false", "--set", "dropout=0"] + sets + (["--linears"] if linears else [])
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True, env=dict(os.environ, **EXTRA_ENV)).stdout)


def run_torch(c, threads, compile_, sdpa=False, linears=False, dtype="float32"):
    cmd = [sys.executable, os.path.join(HERE, "torch_bench.py"), "--threads", str(threads), "--steps", str(c["steps"]), "--warmup", "2" if not compile_ else "3"]
    if not linears:
        cmd += ["--dtype", dtype]
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
    ap.add_argument("--isa", choices=["avx2", "avx512bf16"], help="hold both sides to AVX2 (what an AVX2-only CPU would run), or to AVX-512 BF16 without AMX")
    ap.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32", help="mixed precision on both sides (gptrain's dtype, PyTorch's CPU autocast), with gptrain's fp32 as a third side")
    a = ap.parse_args()
    if a.isa == "avx2":
        EXTRA_ENV.update(AVX2_ENV)
    if a.isa == "avx512bf16":
        EXTRA_ENV.update(BF16_NO_AMX_ENV)
    if a.linears:
        return linears(a)
    mixed = a.dtype != "float32"
    print(f"{'config':<8} {'gptrain ms':>11} {'torch ms':>10} {'ratio':>7} {'gptrain MFU':>12} {'torch MFU':>10} {'gptrain RSS':>12} {'torch RSS':>10}" + (f" {'compile ms':>11} {'ratio':>7}" if a.compile else "") + (f" {'own fp32 ms':>12} {'ratio':>7}" if mixed else ""))
    peaks, isa = [], ""
    for name in a.configs.split(","):
        c = CONFIGS[name]
        g, t, tc, gf = [], [], [], []
        for _ in range(a.rounds):  # A B A B ...
            g.append(run_gptrain(c, a.threads, dtype=a.dtype))
            t.append(run_torch(c, a.threads, False, a.sdpa, dtype=a.dtype))
            if a.compile:
                tc.append(run_torch(c, a.threads, True, a.sdpa, dtype=a.dtype))
            if mixed:
                gf.append(run_gptrain(c, a.threads))
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
        if mixed:
            fm, fratio = paired(g, gf)
            line += f" {fm:>12.2f} {fratio:>6.2f}x"
        print(line, flush=True)
        peaks += [x["peak_gflops"] for x in g]
        isa = g[-1].get("isa", "") + (f", {g[-1].get('dtype', '')}: {g[-1].get('dtype_note', '')}" if mixed else "")
    print(f"MFU against the best {isa} peak gptrain's probe has seen on this machine by each config's last round (up to {max(peaks):.1f} GFLOP/s)", flush=True)


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
