"""PyTorch reference of exactly the model gptrain trains.

GPT-2 as nanoGPT's model.py defines it (pre-LN blocks, causal self-attention, 4x MLP, tied
lm_head, LayerNorm with optional bias), with the two choices gptrain makes explicit:
  * GELU is the tanh approximation (GPT-2's "gelu_new"),
  * the vocabulary may be padded (wte has Vp >= V rows); softmax and loss use the first V logits.

Parameter names follow Hugging Face's GPT2LMHeadModel (`transformer.h.0.attn.c_attn.weight`),
but linear weights are stored as nn.Linear (out, in). `load_hf` / `save_hf` convert to and from
the Conv1D (in, out) layout of Hugging Face files; `to_stacked` / `from_stacked` convert to and
from gptrain's own stacked layout (`qkvw` of shape (L, 3C, C), ...).
"""

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class Config:
    n_layer: int
    n_head: int
    n_embd: int
    block_size: int
    vocab_size: int  # real vocabulary: softmax runs over it
    padded_vocab_size: int  # rows of wte
    bias: bool = True
    dropout: float = 0.0
    # attention through F.scaled_dot_product_attention(is_causal=True), nanoGPT's "flash" path
    # (same math, fused kernel); the explicit softmax below is the default
    sdpa: bool = False


class LayerNorm(nn.Module):
    def __init__(self, ndim, bias):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x):
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.n_head = cfg.n_head
        self.sdpa = cfg.sdpa

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        hs = C // self.n_head
        q = q.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, hs).transpose(1, 2)
        v = v.view(B, T, self.n_head, hs).transpose(1, 2)
        if self.sdpa:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hs))
        mask = torch.tril(torch.ones(T, T, dtype=torch.bool, device=x.device))
        att = att.masked_fill(~mask, float("-inf"))
        att = F.softmax(att, dim=-1)
        y = (att @ v).transpose(1, 2).contiguous().view(B, T, C)
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)

    def forward(self, x):
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.ln_1 = LayerNorm(cfg.n_embd, cfg.bias)
        self.attn = Attention(cfg)
        self.ln_2 = LayerNorm(cfg.n_embd, cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(cfg.padded_vocab_size, cfg.n_embd),
                wpe=nn.Embedding(cfg.block_size, cfg.n_embd),
                h=nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)]),
                ln_f=LayerNorm(cfg.n_embd, cfg.bias),
            )
        )
        self.apply(self._init)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * cfg.n_layer))
        with torch.no_grad():
            self.transformer.wte.weight[cfg.vocab_size :] = 0

    @staticmethod
    def _init(m):
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, 0.0, 0.02)

    def forward(self, idx, targets=None):
        B, T = idx.shape
        pos = torch.arange(T, device=idx.device)
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)
        for block in self.transformer.h:
            x = block(x)
        x = self.transformer.ln_f(x)
        logits = x @ self.transformer.wte.weight.t()  # tied lm_head, (B, T, Vp)
        if targets is None:
            return logits, None
        V = self.cfg.vocab_size
        loss = F.cross_entropy(logits[..., :V].reshape(-1, V), targets.reshape(-1))
        return logits, loss

    def param_groups(self, weight_decay):
        """nanoGPT's configure_optimizers: decay tensors of >= 2 dims."""
        decay = [p for p in self.parameters() if p.dim() >= 2]
        nodecay = [p for p in self.parameters() if p.dim() < 2]
        return [{"params": decay, "weight_decay": weight_decay}, {"params": nodecay, "weight_decay": 0.0}]


# ---------------------------------------------------------------------------------------------
# gptrain's stacked layout

def stacked_names(cfg):
    """gptrain's tensor names in buffer order, with the per-layer source of each."""
    names = [("wte", "transformer.wte.weight"), ("wpe", "transformer.wpe.weight"), ("ln1w", "ln_1.weight")]
    if cfg.bias:
        names.append(("ln1b", "ln_1.bias"))
    names.append(("qkvw", "attn.c_attn.weight"))
    if cfg.bias:
        names.append(("qkvb", "attn.c_attn.bias"))
    names.append(("attprojw", "attn.c_proj.weight"))
    if cfg.bias:
        names.append(("attprojb", "attn.c_proj.bias"))
    names.append(("ln2w", "ln_2.weight"))
    if cfg.bias:
        names.append(("ln2b", "ln_2.bias"))
    names.append(("fcw", "mlp.c_fc.weight"))
    if cfg.bias:
        names.append(("fcb", "mlp.c_fc.bias"))
    names.append(("fcprojw", "mlp.c_proj.weight"))
    if cfg.bias:
        names.append(("fcprojb", "mlp.c_proj.bias"))
    names.append(("lnfw", "transformer.ln_f.weight"))
    if cfg.bias:
        names.append(("lnfb", "transformer.ln_f.bias"))
    return names


def to_stacked(model, grads=False):
    sd = dict(model.named_parameters())
    get = (lambda p: p.grad) if grads else (lambda p: p.data)
    out = {}
    for ours, src in stacked_names(model.cfg):
        if src.startswith("transformer."):
            out[ours] = get(sd[src]).detach().clone()
        else:
            out[ours] = torch.stack([get(sd[f"transformer.h.{l}.{src}"]).detach() for l in range(model.cfg.n_layer)])
    return out


def from_stacked(model, tensors):
    sd = dict(model.named_parameters())
    with torch.no_grad():
        for ours, src in stacked_names(model.cfg):
            if src.startswith("transformer."):
                sd[src].copy_(tensors[ours])
            else:
                for l in range(model.cfg.n_layer):
                    sd[f"transformer.h.{l}.{src}"].copy_(tensors[ours][l])


# ---------------------------------------------------------------------------------------------
# nanoGPT's training iteration, timed (tools/gpu_calibrate.py, tools/bench_gpu.py)


def nanogpt_iterations(cfg, device, dtype, batch_size, grad_accum, compile=False):
    """Trains a fresh `GPT(cfg)` on random tokens the way nanoGPT's train.py iterates, without
    end: `grad_accum` micro-steps of (batch_size, block_size) forward under autocast to `dtype`
    ("bf16", "fp16"; anything else, or a CPU `device`: none) and backward, clipping at 1.0,
    AdamW (lr 6e-4, betas 0.9/0.95, decay 0.1 on 2-D tensors; fused on CUDA), GradScaler for
    fp16, zero_grad. Yields (loss of the last micro-step, milliseconds) per iteration, the device
    synchronized before and after. The model is made at the first `next()`: seed before it."""
    import contextlib
    import time

    cuda = device.startswith("cuda")
    model = GPT(cfg).to(device)
    opt = torch.optim.AdamW(model.param_groups(0.1), lr=6e-4, betas=(0.9, 0.95), fused=cuda)
    fwd = torch.compile(model) if compile else model
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(dtype) if cuda else None
    scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    B, T, V = batch_size, cfg.block_size, cfg.vocab_size
    while True:
        sync()
        t0 = time.perf_counter()
        for _ in range(grad_accum):
            x = torch.randint(0, V, (B, T), device=device)
            y = torch.randint(0, V, (B, T), device=device)
            with torch.autocast("cuda", dtype=amp) if amp is not None else contextlib.nullcontext():
                _, loss = fwd(x, y)
            scaler.scale(loss / grad_accum).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        sync()
        yield loss.item(), (time.perf_counter() - t0) * 1e3


# Hugging Face GPT-2 files

CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def load_hf(path, cfg):
    """Loads a Hugging Face GPT-2 model.safetensors (with or without the `transformer.` prefix)."""
    from safetensors.torch import load_file

    raw = load_file(path)
    model = GPT(cfg)
    sd = dict(model.named_parameters())
    with torch.no_grad():
        for name, p in sd.items():
            key = name if name in raw else name.removeprefix("transformer.")
            t = raw[key].float()
            if name.endswith(CONV1D):
                t = t.t()
            p.copy_(t)
    return model
