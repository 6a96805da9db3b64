"""Checks `gptrain estimate` against a real GPU: times full nanoGPT-style training iterations of
the PyTorch reference model (tools/reference.py) on CUDA and prints measured ms/iter and MFU next
to what `gptrain estimate` predicts for the same preset on the named device.

    python tools/gpu_calibrate.py --device h200 [--presets rtx4070-40m,gpt2-124m] [--set KEY=VALUE ...] [--modes eager,compile] [--iters 4]

Each iteration is what nanoGPT's train.py does per iteration: grad_accum micro-steps of forward
(autocast to --dtype) and backward, gradient clipping at 1.0, fused AdamW, zero_grad. Tokens are
random and made on the GPU (no data loading). Attention goes through scaled_dot_product_attention
(nanoGPT's flash path); TF32 is allowed for fp32 matmuls, as in nanoGPT. The first --warmup
iterations (compilation, autotuning, allocator growth) are timed but left out of the median.

The run's shape and schedule, its FLOPs per iteration and the device's peak all come from
`gptrain estimate --json` of the preset (the one FLOPs model), so the measured MFU is the same
quantity the estimate assumes. Needs the release binary (cargo build --release) and a CUDA
build of PyTorch.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reference import Config, nanogpt_iterations  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GPTRAIN = os.environ.get("GPTRAIN", os.path.join(ROOT, "target", "release", "gptrain"))


def estimate(preset, sets, device, dtype):
    """`gptrain estimate --json` of a preset: the run's shape and schedule, its FLOPs per
    iteration and the prediction, all from gptrain."""
    cmd = [GPTRAIN, "estimate", "--preset", preset, "--device", device, "--dtype", dtype, "--json"]
    for kv in sets:
        cmd += ["--set", kv]
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)


def time_iterations(e, mode, dtype, iters, warmup):
    torch.manual_seed(0)
    m = e["model"]
    cfg = Config(n_layer=m["n_layer"], n_head=m["n_head"], n_embd=m["n_embd"], block_size=m["block_size"], vocab_size=m["vocab_size"], padded_vocab_size=m["padded_vocab_size"], bias=m["bias"], sdpa=True)
    torch.cuda.reset_peak_memory_stats()
    steps = nanogpt_iterations(cfg, "cuda", dtype, e["batch_size"], e["grad_accum"], compile=mode == "compile")
    losses, times = zip(*(next(steps) for _ in range(warmup + iters)))
    return dict(warmup_ms=list(times[:warmup]), ms=list(times[warmup:]), loss=losses[-1], peak_alloc_bytes=torch.cuda.max_memory_allocated(), peak_reserved_bytes=torch.cuda.max_memory_reserved())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="h200", help="gptrain's name for the card this runs on (gptrain estimate --list-devices)")
    ap.add_argument("--presets", default="rtx4070-40m,gpt2-124m", help="gptrain presets (gptrain estimate --help)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="passed to gptrain estimate, e.g. --set batch_size=8")
    ap.add_argument("--modes", default="eager,compile")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp16"])
    ap.add_argument("--iters", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--json", help="also write every number to this file")
    a = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}, {a.dtype}", flush=True)
    print(f"{'preset':<12} {'mode':<8} {'ms/iter':>9} {'min-max':>15} {'tok/s':>10} {'MFU':>6} {'predicted ms':>17} {'in range':>8} {'peak alloc':>10}", flush=True)
    rows = []
    for name in a.presets.split(","):
        e = estimate(name, a.set, a.device, a.dtype)
        for mode in a.modes.split(","):
            r = time_iterations(e, mode, a.dtype, a.iters, a.warmup)
            ms = statistics.median(r["ms"])
            mfu = e["flops_per_iter"] / (ms / 1e3) / e["peak_flops"]
            lo, hi = e["ms_per_iter_range"]
            row = dict(preset=name, mode=mode, dtype=a.dtype, ms_per_iter=ms, mfu=mfu, tokens_per_second=e["tokens_per_iter"] / (ms / 1e3), predicted_ms_range=[lo, hi], predicted_mfu=[e["mfu"]["low"], e["mfu"]["high"]], predicted_memory_bytes=e["memory_bytes"], **r)
            rows.append(row)
            print(f"{name:<12} {mode:<8} {ms:>9.1f} {min(r['ms']):>7.1f}-{max(r['ms']):<7.1f} {row['tokens_per_second']:>10.0f} {mfu * 100:>5.1f}% {lo:>8.0f}-{hi:<8.0f} {'yes' if lo <= ms <= hi else 'NO':>8} {r['peak_alloc_bytes'] / 2**30:>8.2f}GiB", flush=True)
    print(f"MFU: gptrain's FLOPs per iteration over ms/iter, against {a.device}'s {a.dtype} peak ({e['peak_flops'] / 1e12:.1f} TFLOP/s, {e['peak_source']})")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
