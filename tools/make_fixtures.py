"""Writes the PyTorch fixtures gptrain's tests compare against (tests/fixtures/).

    pip install torch safetensors numpy
    python tools/make_fixtures.py

Each case is one safetensors file: the config (in the metadata), the initial parameters in
gptrain's stacked layout (`param.<name>`), one batch (`x`, `y`), the logits and loss of that batch,
every parameter gradient (`grad.<name>`), and a 10-step AdamW run with gradient accumulation and
clipping: its micro-batches (`train_x`, `train_y`: (steps, accum, B, T)), learning rates, losses,
gradient norms before clipping, and the final parameters (`final.<name>`).
With `--autocast`, writes only `tiny_bf16` and `tiny_fp16`: the `tiny` case (same parameters,
batches and schedule) run under torch.autocast("cpu", bfloat16 / float16), the fp16 one with
torch.amp.GradScaler at its defaults (init scale 65536, growth interval 2000): its gradients are
stored unscaled, and `train_scale` / `train_skipped` record the scale after each step and whether
the step was skipped. What gptrain's bf16/fp16 runs are compared with (tests/parity.rs).
Also writes a small Hugging Face GPT-2-layout file (Conv1D weights, no `transformer.` prefix,
the old `attn.bias` mask buffers) with the logits it must give.
"""

import contextlib
import json
import math
import os
import sys

import torch
from safetensors.torch import save_file

from reference import GPT, Config, to_stacked

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "tests", "fixtures")

CASES = {
    # 2 layers, 64 dims, biases, unpadded character vocabulary
    "tiny": dict(cfg=Config(n_layer=2, n_head=4, n_embd=64, block_size=16, vocab_size=65, padded_vocab_size=65, bias=True), B=3, T=16),
    # no biases, vocabulary padded from 50 to 64, T shorter than block_size
    "padded": dict(cfg=Config(n_layer=2, n_head=2, n_embd=32, block_size=12, vocab_size=50, padded_vocab_size=64, bias=False), B=2, T=8),
}

TRAIN = dict(steps=10, accum=2, lr=1e-3, min_lr=1e-4, warmup_iters=2, lr_decay_iters=8, weight_decay=0.1, beta1=0.9, beta2=0.95, grad_clip=1.7)


def get_lr(it, t):
    """nanoGPT's get_lr: linear warmup, cosine decay to min_lr, then min_lr."""
    if it < t["warmup_iters"]:
        return t["lr"] * (it + 1) / (t["warmup_iters"] + 1)
    if it > t["lr_decay_iters"]:
        return t["min_lr"]
    ratio = (it - t["warmup_iters"]) / (t["lr_decay_iters"] - t["warmup_iters"])
    coeff = 0.5 * (1.0 + math.cos(math.pi * ratio))
    return t["min_lr"] + coeff * (t["lr"] - t["min_lr"])


def make_case(name, cfg, B, T, amp=None):
    """The case's fixture; with `amp` (torch.bfloat16 / torch.float16), under CPU autocast."""
    autocast = (lambda: torch.autocast("cpu", dtype=amp)) if amp else contextlib.nullcontext
    scaler = torch.amp.GradScaler("cpu", init_scale=65536.0, growth_interval=2000, enabled=amp == torch.float16)
    torch.manual_seed(1234)
    model = GPT(cfg)
    out = {}
    for k, v in to_stacked(model).items():
        out[f"param.{k}"] = v
    g = torch.Generator().manual_seed(99)
    x = torch.randint(0, cfg.vocab_size, (B, T), generator=g)
    y = torch.randint(0, cfg.vocab_size, (B, T), generator=g)
    with autocast():
        logits, loss = model(x, y)
    scaler.scale(loss).backward()
    out["x"], out["y"] = x.to(torch.int32), y.to(torch.int32)
    out["logits"] = logits.detach().float()
    out["loss"] = loss.detach().float().reshape(1)
    for k, v in to_stacked(model, grads=True).items():
        out[f"grad.{k}"] = v / scaler.get_scale()  # unscaled (fp16); the scale is 1.0 otherwise

    # 10 AdamW steps with accumulation and clipping, from the same initial parameters
    t = TRAIN
    model.zero_grad(set_to_none=True)
    opt = torch.optim.AdamW(model.param_groups(t["weight_decay"]), lr=t["lr"], betas=(t["beta1"], t["beta2"]), eps=1e-8)
    xs = torch.randint(0, cfg.vocab_size, (t["steps"], t["accum"], B, T), generator=g)
    ys = torch.randint(0, cfg.vocab_size, (t["steps"], t["accum"], B, T), generator=g)
    lrs, losses, norms, scales, skipped = [], [], [], [], []
    for step in range(t["steps"]):
        lr = get_lr(step, t)
        for group in opt.param_groups:
            group["lr"] = lr
        total = 0.0
        for micro in range(t["accum"]):
            with autocast():
                _, l = model(xs[step, micro], ys[step, micro])
            scaler.scale(l / t["accum"]).backward()
            total += l.item()
        scaler.unscale_(opt)
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), t["grad_clip"])
        before = scaler.get_scale()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        lrs.append(lr)
        losses.append(total / t["accum"])
        norms.append(norm.item())
        scales.append(scaler.get_scale())
        skipped.append(float(scaler.is_enabled() and scaler.get_scale() < before))
    out["train_x"], out["train_y"] = xs.to(torch.int32), ys.to(torch.int32)
    out["train_lr"] = torch.tensor(lrs, dtype=torch.float32)
    out["train_loss"] = torch.tensor(losses, dtype=torch.float32)
    out["train_norm"] = torch.tensor(norms, dtype=torch.float32)
    if amp == torch.float16:
        out["train_scale"] = torch.tensor(scales, dtype=torch.float32)
        out["train_skipped"] = torch.tensor(skipped, dtype=torch.float32)
    for k, v in to_stacked(model).items():
        out[f"final.{k}"] = v
    meta = {"config": json.dumps(cfg.__dict__), "B": str(B), "T": str(T), "train": json.dumps(t), "torch": torch.__version__}
    if amp:
        meta["autocast"] = str(amp)
    out = {k: v.contiguous() for k, v in out.items()}
    save_file(out, os.path.join(OUT, f"{name}.safetensors"), metadata=meta)
    print(f"{name}: loss {loss.item():.6f}, clipped steps {sum(n > t['grad_clip'] for n in norms)}/{t['steps']}, norms {[round(n, 3) for n in norms]}")


def make_hf_case():
    """A tiny GPT-2 in the layout Hugging Face's own gpt2 file uses."""
    cfg = Config(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=40, padded_vocab_size=40, bias=True)
    torch.manual_seed(7)
    model = GPT(cfg)
    tensors = {}
    for name, p in model.named_parameters():
        key = name.removeprefix("transformer.")
        t = p.detach()
        if name.endswith(("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")):
            t = t.t()
        tensors[key] = t.contiguous()
    for l in range(cfg.n_layer):
        tensors[f"h.{l}.attn.bias"] = torch.tril(torch.ones(cfg.block_size, cfg.block_size)).view(1, 1, cfg.block_size, cfg.block_size)
    d = os.path.join(OUT, "hf_tiny")
    os.makedirs(d, exist_ok=True)
    save_file(tensors, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
    hf_cfg = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": cfg.vocab_size, "n_positions": cfg.block_size, "n_ctx": cfg.block_size, "n_embd": cfg.n_embd, "n_layer": cfg.n_layer, "n_head": cfg.n_head, "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5}
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(hf_cfg, f, indent=2)
    g = torch.Generator().manual_seed(5)
    x = torch.randint(0, cfg.vocab_size, (1, 10), generator=g)
    logits, _ = model(x)
    save_file({"x": x.to(torch.int32), "logits": logits.detach().contiguous()}, os.path.join(d, "expected.safetensors"))
    print("hf_tiny: written")


def make_nanogpt_char_dir():
    """A tiny dataset directory exactly as nanoGPT's data/shakespeare_char/prepare.py writes one."""
    import pickle

    import numpy as np

    text = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n" * 3
    chars = sorted(list(set(text)))
    stoi = {ch: i for i, ch in enumerate(chars)}
    itos = {i: ch for i, ch in enumerate(chars)}
    d = os.path.join(OUT, "nanogpt_char")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "meta.pkl"), "wb") as f:
        pickle.dump({"vocab_size": len(chars), "itos": itos, "stoi": stoi}, f)
    ids = np.array([stoi[c] for c in text], dtype=np.uint16)
    n = len(ids)
    ids[: int(n * 0.9)].tofile(os.path.join(d, "train.bin"))
    ids[int(n * 0.9) :].tofile(os.path.join(d, "val.bin"))
    print(f"nanogpt_char: {len(chars)} characters, {n} tokens")


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    if "--autocast" in sys.argv[1:]:
        case = CASES["tiny"]
        make_case("tiny_bf16", case["cfg"], case["B"], case["T"], amp=torch.bfloat16)
        make_case("tiny_fp16", case["cfg"], case["B"], case["T"], amp=torch.float16)
        sys.exit(0)
    for name, case in CASES.items():
        make_case(name, case["cfg"], case["B"], case["T"])
    make_hf_case()
    make_nanogpt_char_dir()
