"""Times full PyTorch training steps (forward, backward, clip_grad_norm_, AdamW) of the reference
model on synthetic tokens, and prints one JSON object like `gptrain bench --json`.

    python tools/torch_bench.py --n-layer 4 --n-head 4 --n-embd 128 --block-size 64 --batch-size 12 --vocab-size 65 --threads 2 [--dtype bfloat16]

`--dtype bfloat16|float16` runs the step under torch.autocast("cpu") (fp32 parameters, AdamW
and clipping; float16 with torch.amp.GradScaler), what a PyTorch user would run for mixed
precision on a CPU.
"""

import argparse
import contextlib
import json
import resource
import time

import torch

from reference import GPT, Config


def main():
    ap = argparse.ArgumentParser()
    for k, v in dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12, vocab_size=65, steps=10, warmup=2, threads=2).items():
        ap.add_argument("--" + k.replace("_", "-"), type=int, default=v)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--linears", action="store_true", help="time only the linear layers' matmuls, like `gptrain bench --linears`")
    ap.add_argument("--sdpa", action="store_true", help="attention through F.scaled_dot_product_attention (nanoGPT's flash path)")
    ap.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32", help="autocast dtype of the step")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    if a.linears:
        return linears(a)
    cfg = Config(n_layer=a.n_layer, n_head=a.n_head, n_embd=a.n_embd, block_size=a.block_size, vocab_size=a.vocab_size, padded_vocab_size=a.vocab_size, bias=False, sdpa=a.sdpa)
    model = GPT(cfg)
    opt = torch.optim.AdamW(model.param_groups(0.1), lr=1e-4, betas=(0.9, 0.95))
    fwd = torch.compile(model) if a.compile else model
    amp = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}[a.dtype]
    autocast = (lambda: torch.autocast("cpu", dtype=amp)) if amp else contextlib.nullcontext
    scaler = torch.amp.GradScaler("cpu", enabled=amp == torch.float16)
    times = []
    for i in range(a.warmup + a.steps):
        x = torch.randint(0, a.vocab_size, (a.batch_size, a.block_size))
        y = torch.randint(0, a.vocab_size, (a.batch_size, a.block_size))
        t0 = time.perf_counter()
        with autocast():
            _, loss = fwd(x, y)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        if i >= a.warmup:
            times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    ms = times[len(times) // 2]
    print(json.dumps({"ms_per_step": ms, "tokens_per_second": a.batch_size * a.block_size / (ms / 1e3), "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "torch": torch.__version__, "compile": a.compile, "sdpa": a.sdpa, "dtype": a.dtype}))


def linears(a):
    """Every layer's forward product, then input- and weight-gradient products in reverse (lm_head
    included), each layer on its own tensors: the same passes as `gptrain bench --linears`."""
    c, bt, v = a.n_embd, a.batch_size * a.block_size, a.vocab_size
    shapes = [(c, 3 * c), (c, c), (c, 4 * c), (4 * c, c)] * a.n_layer + [(c, v)]
    lins = [dict(inp=torch.randn(bt, ic), w=torch.randn(oc, ic) * 0.02, out=torch.empty(bt, oc), dw=torch.zeros(oc, ic), dinp=torch.empty(bt, ic)) for ic, oc in shapes]
    times = []
    for i in range(a.warmup + a.steps):
        t0 = time.perf_counter()
        for l in lins:
            torch.mm(l["inp"], l["w"].t(), out=l["out"])
        for l in reversed(lins):
            torch.mm(l["out"], l["w"], out=l["dinp"])
            l["dw"].addmm_(l["out"].t(), l["inp"])
        if i >= a.warmup:
            times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    ms = times[len(times) // 2]
    flops = 3 * 2 * bt * sum(ic * oc for ic, oc in shapes)
    print(json.dumps({"ms_per_step": ms, "gflops": flops / (ms / 1e3) / 1e9, "torch": torch.__version__}))


if __name__ == "__main__":
    main()
