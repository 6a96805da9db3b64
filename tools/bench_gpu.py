"""Side-by-side GPU benchmark (issue 23, item 1): gptrain, nanoGPT's own train.py and this
repository's PyTorch reference model, alternating round by round on the same card, on the same
model shape, micro-batch, block, gradient accumulation and dtype.

    python tools/bench_gpu.py --nanogpt ~/nanoGPT [--presets gpt2-124m,rtx4070-40m] [--rounds 3] [--warmup 2] [--iters 5] [--grad-accum N] [--set KEY=VALUE ...] [--sides gptrain,nanogpt,reference] [--card h100-sxm] [--gptrain PATH] [--out DIR] [--budget 450]
    python tools/bench_gpu.py --device cpu --nanogpt ~/nanoGPT --set n_layer=2 --set n_head=2 --set n_embd=64 --set block_size=64 --set batch_size=4 --rounds 2 --threads 1

Each round runs, one process after the other:
  gptrain    `gptrain bench --json --preset P --set device=cuda --set dtype=D --grad-accum N`
             (the prebuilt binary: target/release/gptrain, else the stripped copy that
             `tools/gpu_check.sh --build` packs; no Rust toolchain needed on the GPU machine;
             random tokens made on the host, no data loader);
  nanoGPT    the checkout's own train.py (compile=True, flash attention, fused AdamW), run in a
             scratch folder holding random uint16 tokens as data/bench/{train,val}.bin and a
             meta.pkl naming the vocabulary, through a small runpy launcher that prints its peak
             memory at exit; no evaluation (eval_iters=0: its evaluation at iteration 0 runs no
             batch), no checkpoint (always_save_checkpoint=False), log_interval=1;
  reference  tools/reference.py's GPT with torch.compile, driven as tools/gpu_calibrate.py does
             (random tokens made on the GPU, micro-steps under autocast, clipping at 1.0, fused
             AdamW, GradScaler for fp16, attention through scaled_dot_product_attention).

The shape, schedule, FLOPs per iteration and the card's peak come from
`gptrain estimate --preset P --device CARD --json` (with the same --set overrides): one FLOPs
convention for every side (gptrain's perf::flops: matmul FLOPs only, 3x the forward, attention
dense over T x T, as PaLM's appendix B and nanoGPT count), over the device table's dense peak for
the dtype. Per side it prints the steady ms/iter (median of the iterations after --warmup),
tokens/s, MFU, peak device memory and the time from launch to the end of the first steady
iteration; then each round's paired ratios of tokens/s (gptrain over nanoGPT, gptrain over the
reference) and their medians. The first round of each preset runs with empty kernel caches
(`cold`: fresh XDG_CACHE_HOME for gptrain's NVRTC cache, TORCHINDUCTOR_CACHE_DIR and
TRITON_CACHE_DIR under --out); later rounds find them filled (`warm`). --keep-caches uses the
user's own caches instead.

Rounds go round-major (round 1 of every preset, then round 2, ...), and no process starts with
less than a minute of --budget (450 s) left, so a run that would overrun still ends with the
table, its presets cut at the same round. `--grad-accum` shortens a run (fewer micro-steps per
iteration, on every side); the output says when it differs from the preset's. Full logs of every
process (each line stamped with its seconds since launch), and results.json, are written under
--out (default: $OUT if set, else a new temporary folder). Exits 1 with a one-line error if a
side failed (the other sides still run and print).

`--device cpu` exercises the harness without a GPU: gptrain with `--set device=cpu`, nanoGPT
with device=cpu compile=False dtype=float32, the reference in eager mode; float32 only, memory as
peak RSS, the default preset shakespeare-char-cpu; `--threads N` holds every side to N threads
(on a shared CPU, PyTorch's OpenMP threads spin against other work unless fewer than the cores).
"""

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SIDES = ("gptrain", "nanogpt", "reference")
LABEL = {"gptrain": "gptrain", "nanogpt": "nanoGPT", "reference": "reference"}
# gptrain's dtype names: in `estimate --json` / `--set dtype=`, and nanoGPT's
SET_DTYPE = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32", "tf32": "tfloat32"}
NANOGPT_DTYPE = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32", "tf32": "float32"}
ITER_LINE = re.compile(r"^iter (\d+): loss ([^,]+), time ([0-9.]+)ms")
MEMORY_TAG = "BENCH_GPU_MEMORY "
MIN_LEFT_S = 60
DATA_TOKENS = 1 << 20


class Fail(Exception):
    """A one-line error for the user."""


def smi_index(device):
    """nvidia-smi's name for the card torch and gptrain call `device` (cuda, cuda:N): the N-th
    entry of CUDA_VISIBLE_DEVICES where that is set."""
    n = int(device.split(":")[1]) if ":" in device else 0
    visible = [v for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    return visible[n].strip() if n < len(visible) else str(n)


def git_rev(folder):
    try:
        r = subprocess.run(["git", "-C", folder, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return r.stdout.strip() if r.returncode == 0 else ""


def gib(b):
    return "n/a" if b is None else f"{b / 2**30:.2f}GiB"


def secs(s):
    return f"{s:.2f}s" if s < 10 else f"{s:.1f}s"


# ---------------------------------------------------------------------------------------------
# the children: the reference loop and nanoGPT's launcher (this file runs itself as each)


def child_reference(spec):
    """Times full iterations of tools/reference.py's GPT (`reference.nanogpt_iterations`, as
    gpu_calibrate.py does), printing one `iter N: loss L, time Tms` line per iteration and the
    peak memory at exit."""
    import torch
    from reference import Config, nanogpt_iterations

    s = json.loads(spec)
    dev = s["device"]
    if dev.startswith("cuda:"):
        torch.cuda.set_device(dev)  # synchronize() and the memory peaks are of the current device
    torch.manual_seed(1337)
    torch.backends.cuda.matmul.allow_tf32 = True  # as nanoGPT's train.py
    torch.backends.cudnn.allow_tf32 = True
    cfg = Config(n_layer=s["n_layer"], n_head=s["n_head"], n_embd=s["n_embd"], block_size=s["block_size"], vocab_size=s["vocab_size"], padded_vocab_size=s["padded_vocab_size"], bias=s["bias"], sdpa=True)
    steps = nanogpt_iterations(cfg, dev, s["dtype"], s["batch_size"], s["grad_accum"], compile=s["compile"])
    for it in range(s["warmup"] + s["iters"]):
        loss, ms = next(steps)
        print(f"iter {it}: loss {loss:.4f}, time {ms:.2f}ms", flush=True)
    print_memory()


def child_nanogpt(train_py, args):
    """Runs nanoGPT's train.py as `python train.py ARGS` would (its own folder first on the
    path, for `from model import ...`), then prints the peak memory, whatever happened."""
    import runpy

    import torch

    sys.argv = [train_py] + args
    sys.path[0] = os.path.dirname(os.path.abspath(train_py))
    device = [x.split("=", 1)[1] for x in args if x.startswith("--device=")]
    if device and device[-1].startswith("cuda:"):
        torch.cuda.set_device(device[-1])  # the memory peaks are of the current device
    try:
        runpy.run_path(train_py, run_name="__main__")
    finally:
        print_memory()


def print_memory():
    import resource

    import torch

    m = {"peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        m.update(peak_alloc_bytes=torch.cuda.max_memory_allocated(), peak_reserved_bytes=torch.cuda.max_memory_reserved(), torch=torch.__version__)
    print(MEMORY_TAG + json.dumps(m), flush=True)


# ---------------------------------------------------------------------------------------------
# the harness


def gptrain_json(gptrain, args, what):
    try:
        r = subprocess.run([gptrain] + args, capture_output=True, text=True)
    except OSError as e:
        raise Fail(f"cannot run {gptrain} ({e.strerror}) (hint: cargo build --release, or --gptrain PATH)")
    if r.returncode != 0:
        last = (r.stderr.strip() or r.stdout.strip() or "no output").splitlines()[-1]
        raise Fail(f"{what} failed: {last.removeprefix('error: ')}")
    return json.loads(r.stdout)


def card_name(gptrain, sets, named, device):
    """gptrain's device-table name of the card: --card, else the driver's name looked up as
    gptrain's CUDA backend does (the longest leading words that name a known GPU)."""
    if named:
        return named
    try:
        q = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader", "-i", smi_index(device)], capture_output=True, text=True, timeout=30)
        driver = q.stdout.strip().splitlines()[0] if q.returncode == 0 and q.stdout.strip() else ""
    except (OSError, subprocess.TimeoutExpired):
        driver = ""
    if not driver:
        raise Fail("cannot read the GPU's name with nvidia-smi (hint: --card NAME, one of `gptrain estimate --list-devices`)")
    words = driver.split()
    for n in range(len(words), 0, -1):
        name = " ".join(words[:n])
        r = subprocess.run([gptrain, "estimate", "--device", name, "--json"] + sets, capture_output=True, text=True)
        if r.returncode == 0:
            return json.loads(r.stdout)["device"]
    raise Fail(f"the GPU `{driver}` is not in gptrain's device table, so there is no peak for MFU (hint: --card NAME, one of `gptrain estimate --list-devices`)")


def plan_preset(a, preset, card):
    """`gptrain estimate` of the preset with the overrides: the run's shape, schedule, FLOPs and
    the card's peak."""
    sets = sum((["--set", kv] for kv in a.set), [])
    base = gptrain_json(a.gptrain, ["estimate", "--preset", preset, "--device", card, "--json"] + sets, f"gptrain estimate --preset {preset}")
    if a.device == "cpu":
        if any(kv.startswith("dtype=") and kv != "dtype=float32" for kv in a.set):
            raise Fail("--device cpu compares float32 only (nanoGPT's train.py has no CPU autocast): drop --set dtype=")
        sets += ["--set", "dtype=float32"]
    elif base["dtype"] == "fp32":
        print("# note: gptrain's fp32 on a GPU is true fp32 matmuls, while nanoGPT allows TF32: --set dtype=tfloat32 compares like with like", flush=True)
    if a.grad_accum:
        sets += ["--set", f"gradient_accumulation_steps={a.grad_accum}"]
    e = gptrain_json(a.gptrain, ["estimate", "--preset", preset, "--device", card, "--json"] + sets, f"gptrain estimate --preset {preset}")
    e["preset_grad_accum"] = base["grad_accum"]
    e["sets"] = sets
    if e["model"]["padded_vocab_size"] > 65535:
        raise Fail(f"vocabulary {e['model']['padded_vocab_size']} does not fit nanoGPT's uint16 token files")
    return e


def write_tokens(folder, vocab, padded_vocab):
    """nanoGPT's dataset: random uint16 tokens as train.bin and val.bin, and meta.pkl naming the
    vocabulary (gptrain's padded size: the rows of wte and of the classifier)."""
    import array
    import pickle
    import random

    os.makedirs(folder, exist_ok=True)
    rng = random.Random(1337)
    for name in ("train.bin", "val.bin"):
        toks = array.array("H", (rng.randrange(vocab) for _ in range(DATA_TOKENS)))
        if sys.byteorder != "little":
            toks.byteswap()
        with open(os.path.join(folder, name), "wb") as f:
            toks.tofile(f)
    with open(os.path.join(folder, "meta.pkl"), "wb") as f:
        pickle.dump({"vocab_size": padded_vocab}, f)


class MemorySampler:
    """The card's memory in use as the driver reports it (nvidia-smi, every 100 ms), highest
    value while a process runs, less the value before it started: every side measured alike
    (CUDA context and allocator caches included). None where nvidia-smi is missing."""

    def __init__(self, device):
        self.enabled = device != "cpu" and shutil.which("nvidia-smi") is not None
        self.idx = smi_index(device) if self.enabled else ""

    def used_mib(self):
        r = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", self.idx], capture_output=True, text=True, timeout=30)
        return float(r.stdout.split()[0])

    def start(self):
        if not self.enabled:
            return None
        try:
            base = self.used_mib()
            p = subprocess.Popen(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", self.idx, "-lms", "100"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
            return None
        state = {"base": base, "peak": base, "proc": p}

        def read():
            for line in p.stdout:
                try:
                    state["peak"] = max(state["peak"], float(line.split()[0]))
                except (ValueError, IndexError):
                    pass

        state["thread"] = threading.Thread(target=read, daemon=True)
        state["thread"].start()
        return state

    @staticmethod
    def stop(state):
        if state is None:
            return None
        state["proc"].terminate()
        state["proc"].wait()
        state["thread"].join(timeout=5)
        return (state["peak"] - state["base"]) * 2**20


def run_logged(cmd, log_path, env, cwd, timeout, sampler):
    """Runs cmd with stdout and stderr into log_path, each line with its seconds since launch.
    Returns (exit code, [(seconds, line)], wall seconds, driver memory bytes or None)."""
    mem = sampler.start()
    lines = []
    t0 = time.monotonic()
    with open(log_path, "w") as log:
        log.write("$ " + " ".join(cmd) + f"\n# cwd {cwd}\n")
        log.flush()
        try:
            p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=cwd, bufsize=1, errors="replace")
        except OSError as e:
            sampler.stop(mem)
            log.write(f"cannot start: {e}\n")
            return None, [(0.0, f"cannot start {cmd[0]}: {e.strerror}")], 0.0, None
        timer = threading.Timer(timeout, p.kill)
        timer.start()
        try:
            for line in p.stdout:
                t = time.monotonic() - t0
                lines.append((t, line.rstrip("\n")))
                log.write(f"[{t:8.3f}s] {line}")
            rc = p.wait()
        finally:
            timer.cancel()
            if p.poll() is None:
                p.kill()
                p.wait()
        wall = time.monotonic() - t0
        if wall >= timeout:
            lines.append((wall, f"killed after {secs(timeout)} (--timeout, or what was left of --budget)"))
            log.write(lines[-1][1] + "\n")
    return rc, lines, wall, sampler.stop(mem)


def steady(times_ms, warmup):
    t = times_ms[warmup:]
    return dict(ms=statistics.median(t), ms_min=min(t), ms_max=max(t), warmup_ms=times_ms[:warmup])


def side_gptrain(a, e, preset, log, env):
    cmd = [a.gptrain, "bench", "--json", "--preset", preset, "--set", f"device={a.device}", "--set", f"dtype={SET_DTYPE[e['dtype']]}"] + e["sets"]
    cmd += ["--steps", str(a.iters), "--warmup", str(a.warmup), "--grad-accum", str(e["grad_accum"])]
    if a.threads:
        cmd += ["--threads", str(a.threads)]
    rc, lines, wall, drv = run_logged(cmd, log, env, ROOT, a.timeout_now, a.sampler)
    js = [l for _, l in lines if l.startswith("{")]
    if rc != 0 or not js:
        return None, lines
    j = json.loads(js[-1])
    steps = j.get("steps_ms")
    r = steady(j.get("warmup_ms", []) + steps, a.warmup) if steps else dict(ms=j["ms_per_step"], ms_min=j.get("ms_p10"), ms_max=j.get("ms_p90"), warmup_ms=[])
    if "first_steady_ms" in j:
        r["first_steady_s"] = j["first_steady_ms"] / 1e3
    else:  # an older binary: wall to exit less the later timed steps (an upper bound)
        r["first_steady_s"] = wall - (sum(steps[1:]) if steps else (a.iters - 1) * j["ms_per_step"]) / 1e3
        r["first_steady_bound"] = True
    r.update(peak_alloc_bytes=j.get("peak_device_bytes"), peak_reserved_bytes=None, driver_bytes=drv, peak_rss_bytes=j.get("peak_rss_bytes"), wall_s=wall, device=j.get("device"))
    return r, lines


def parse_torch_side(a, lines, wall, drv):
    iters = {}
    first = None
    mem = {}
    for t, l in lines:
        m = ITER_LINE.match(l)
        if m:
            i = int(m.group(1))
            iters[i] = float(m.group(3))
            if i == a.warmup and first is None:
                first = t
        elif l.startswith(MEMORY_TAG):
            mem = json.loads(l[len(MEMORY_TAG):])
    if len(iters) < a.warmup + a.iters or first is None:
        return None
    r = steady([iters[i] for i in range(a.warmup + a.iters)], a.warmup)
    r.update(first_steady_s=first, peak_alloc_bytes=mem.get("peak_alloc_bytes"), peak_reserved_bytes=mem.get("peak_reserved_bytes"), driver_bytes=drv, peak_rss_bytes=mem.get("peak_rss_bytes"), wall_s=wall, torch=mem.get("torch"))
    return r


def nanogpt_args(a, e, work):
    m = e["model"]
    cuda = a.device.startswith("cuda")
    last = a.warmup + a.iters - 1  # train.py runs iterations 0..max_iters
    kv = dict(
        dataset="bench", out_dir=os.path.join(work, "out"), init_from="scratch", wandb_log=False,
        n_layer=m["n_layer"], n_head=m["n_head"], n_embd=m["n_embd"], block_size=m["block_size"], bias=m["bias"], dropout=0.0,
        batch_size=e["batch_size"], gradient_accumulation_steps=e["grad_accum"], max_iters=last,
        eval_interval=last + 1000, eval_iters=0, always_save_checkpoint=False, log_interval=1,
        device=a.device, dtype=NANOGPT_DTYPE[e["dtype"]] if cuda else "float32", compile=cuda,
    )
    return [f"--{k}={v}" for k, v in kv.items()]


def side_nanogpt(a, e, preset, log, env, work):
    cmd = [a.python, os.path.abspath(__file__), "_nanogpt", os.path.join(a.nanogpt, "train.py")] + nanogpt_args(a, e, work)
    rc, lines, wall, drv = run_logged(cmd, log, env, work, a.timeout_now, a.sampler)
    return (parse_torch_side(a, lines, wall, drv) if rc == 0 else None), lines


def side_reference(a, e, preset, log, env):
    m = e["model"]
    spec = dict(m, batch_size=e["batch_size"], grad_accum=e["grad_accum"], dtype=e["dtype"], device=a.device, compile=a.device.startswith("cuda"), warmup=a.warmup, iters=a.iters)
    cmd = [a.python, os.path.abspath(__file__), "_reference", json.dumps(spec)]
    rc, lines, wall, drv = run_logged(cmd, log, env, ROOT, a.timeout_now, a.sampler)
    return (parse_torch_side(a, lines, wall, drv) if rc == 0 else None), lines


def child_env(a, cache):
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1")
    if a.threads:
        env.update(OMP_NUM_THREADS=str(a.threads), MKL_NUM_THREADS=str(a.threads))
    if cache:
        env.update(XDG_CACHE_HOME=os.path.join(cache, "xdg"), TORCHINDUCTOR_CACHE_DIR=os.path.join(cache, "inductor"), TRITON_CACHE_DIR=os.path.join(cache, "triton"), CUDA_CACHE_PATH=os.path.join(cache, "nv"))
    return env


def failure_line(lines):
    text = [l for _, l in lines if l.strip() and not l.startswith(MEMORY_TAG)]
    return text[-1].strip() if text else "no output"


def prepare_preset(a, preset, card):
    """The preset's plan (from `gptrain estimate`), its folder and nanoGPT's scratch folder."""
    e = plan_preset(a, preset, card)
    m = e["model"]
    d = os.path.join(a.out, preset)
    work = os.path.join(d, "nanogpt-work")
    os.makedirs(d, exist_ok=True)
    if "nanogpt" in a.sides:
        write_tokens(os.path.join(work, "data", "bench"), m["vocab_size"], m["padded_vocab_size"])
        link = os.path.join(work, "configurator.py")  # train.py exec()s it from the working folder
        if not os.path.lexists(link):
            os.symlink(os.path.join(a.nanogpt, "configurator.py"), link)
    accum_note = "" if e["grad_accum"] == e["preset_grad_accum"] else f" (the preset's is {e['preset_grad_accum']}: set by --grad-accum for this comparison)"
    print(f"## {preset}: {m['n_layer']}x{m['n_embd']} ({m['n_head']} heads), bias {str(m['bias']).lower()}, dropout 0, block {m['block_size']}, micro-batch {e['batch_size']}, grad accum {e['grad_accum']}{accum_note}, vocab {m['vocab_size']} (padded {m['padded_vocab_size']}), {e['dtype']}; {e['tokens_per_iter']:,} tokens and {e['flops_per_iter']:.3e} FLOPs per iteration", flush=True)
    cache = None if a.keep_caches else os.path.join(d, "cache")
    return dict(preset=preset, estimate=e, dir=d, work=work, cache=cache, results={s: [] for s in a.sides}, failed={}, skipped=0)


def run_side(a, p, s, rnd):
    """One process of side `s` in round `rnd` of preset `p`; records its result or failure."""
    preset, e = p["preset"], p["estimate"]
    log = os.path.join(p["dir"], f"round{rnd}-{s}.log")
    env = child_env(a, p["cache"])
    if s == "gptrain":
        r, lines = side_gptrain(a, e, preset, log, env)
    elif s == "nanogpt":
        r, lines = side_nanogpt(a, e, preset, log, env, p["work"])
    else:
        r, lines = side_reference(a, e, preset, log, env)
    if r is None:
        p["failed"][s] = f"{LABEL[s]} failed on {preset} in round {rnd}: {failure_line(lines)} (log: {log})"
        print("   " + p["failed"][s], flush=True)
        return
    r["round"] = rnd
    r["tokens_per_second"] = e["tokens_per_iter"] / (r["ms"] / 1e3)
    r["mfu"] = e["flops_per_iter"] / (r["ms"] / 1e3) / e["peak_flops"]
    p["results"][s].append(r)
    print(f"   round {rnd} {preset:<14} {LABEL[s]:<9} {r['ms']:9.1f} ms/iter {r['tokens_per_second']:>12,.0f} tokens/s  MFU {r['mfu'] * 100:5.1f}%  first steady iteration after {secs(r['first_steady_s'])}", flush=True)


def run_rounds(a, plans):
    """Round by round, every preset, every side in turn (so a cut by --budget leaves every preset
    the same rounds); a side that failed is not run again for that preset."""
    print(f"\n# {a.rounds} rounds x ({a.warmup} warm-up + {a.iters} timed iterations) per side, in the order {', '.join(LABEL[s] for s in a.sides)}; budget {a.budget:.0f} s", flush=True)
    for rnd in range(1, a.rounds + 1):
        for p in plans:
            for s in a.sides:
                if s in p["failed"]:
                    continue
                left = a.deadline - time.monotonic()
                if left < MIN_LEFT_S:
                    p["skipped"] += 1
                    continue
                a.timeout_now = min(a.timeout, left)
                run_side(a, p, s, rnd)
    cut = sum(p["skipped"] for p in plans)
    if cut:
        print(f"# --budget {a.budget:.0f} s reached: {cut} process(es) not run (fewer --rounds, --iters or a smaller --grad-accum fit more)", flush=True)


def per_round_ratio(results, s):
    g = {r["round"]: r["tokens_per_second"] for r in results.get("gptrain", [])}
    o = {r["round"]: r["tokens_per_second"] for r in results.get(s, [])}
    return [g[k] / o[k] for k in sorted(g) if k in o]


def report_preset(a, preset, e, results, failed):
    cpu = a.device == "cpu"
    mem_cols = f"{'peak RSS':>10}" if cpu else f"{'peak alloc':>10} {'reserved':>10} {'driver':>10}"
    w = max(14, len(preset))
    print(f"\n{preset:<{w}} {'ms/iter':>9} {'min-max':>17} {'tokens/s':>12} {'MFU':>6} {mem_cols} {'first steady: cold':>19} {'warm':>6}")
    for s in a.sides:
        rs = results[s]
        if not rs:
            print(f"{LABEL[s]:<{w}} {'failed' if s in failed else 'not run (--budget)'}")
            continue
        ms = statistics.median(r["ms"] for r in rs)
        lo, hi = min(r["ms_min"] for r in rs), max(r["ms_max"] for r in rs)
        tps = statistics.median(r["tokens_per_second"] for r in rs)
        mfu = statistics.median(r["mfu"] for r in rs)
        peak = lambda k: max((r[k] for r in rs if r.get(k) is not None), default=None)  # noqa: E731
        mem = f"{gib(peak('peak_rss_bytes')):>10}" if cpu else f"{gib(peak('peak_alloc_bytes')):>10} {gib(peak('peak_reserved_bytes')):>10} {gib(peak('driver_bytes')):>10}"
        bound = "<=" if any(r.get("first_steady_bound") for r in rs) else ""
        cold = [r["first_steady_s"] for r in rs if r["round"] == 1]
        warm = [r["first_steady_s"] for r in rs if r["round"] > 1]
        cold_s = bound + secs(cold[0]) if cold else "n/a"
        warm_s = bound + secs(statistics.median(warm)) if warm else "n/a"
        print(f"{LABEL[s]:<{w}} {ms:>9.1f} {lo:>8.1f}-{hi:<8.1f} {tps:>12,.0f} {mfu * 100:>5.1f}% {mem} {cold_s:>19} {warm_s:>6}")
    for s in ("nanogpt", "reference"):
        rr = per_round_ratio(results, s)
        if rr and "gptrain" in a.sides:
            print(f"gptrain / {LABEL[s]} tokens/s, per round: {' '.join(f'{x:.3f}' for x in rr)}; median {statistics.median(rr):.3f}x")


def report_all(a, done, card):
    print("\n# summary (median tokens/s over the rounds run; ratios: median of the paired per-round ratios, > 1: gptrain is faster)")
    w = max([14] + [len(p["preset"]) for p in done])
    others = [s for s in ("nanogpt", "reference") if s in a.sides and "gptrain" in a.sides]
    print(f"{'preset':<{w}} {'accum':>5} {'dtype':>5} " + " ".join(f"{LABEL[s] + ' tok/s':>17}" for s in a.sides) + "".join(f" {'vs ' + LABEL[s]:>12}" for s in others))
    for p in done:
        res, e = p["results"], p["estimate"]
        cells = [f"{statistics.median(r['tokens_per_second'] for r in res[s]):>17,.0f}" if res[s] else f"{'failed' if s in p['failed'] else 'not run':>17}" for s in a.sides]
        line = f"{p['preset']:<{w}} {e['grad_accum']:>5} {e['dtype']:>5} " + " ".join(cells)
        for s in others:
            r = per_round_ratio(res, s)
            line += f" {(f'{statistics.median(r):.3f}x' if r else 'n/a'):>12}"
        print(line)
    e = done[-1]["estimate"] if done else None
    if e:
        peak_what = "gptrain's probe of this CPU's f32 peak" if a.device == "cpu" else f"{card}'s {e['dtype']} peak from gptrain's device table"
        print(f"MFU: gptrain's FLOPs per iteration (perf::flops: matmuls only, 3x forward, attention dense over T x T, as PaLM appendix B) over ms/iter, against {peak_what} ({e['peak_flops'] / 1e12:.2f} TFLOP/s; {e['peak_source']})")
    if a.device == "cpu":
        print("memory: peak RSS of each process (torch sides include the PyTorch libraries)")
    else:
        print("memory: `peak alloc` is the allocator's peak (torch.cuda.max_memory_allocated; gptrain: its bench JSON's `peak_device_bytes`, the bytes its CUDA backend allocated, counted exactly), `reserved` torch.cuda.max_memory_reserved, `driver` the card's memory in use by nvidia-smi (every 100 ms, less the idle level; CUDA context and caches included, the one measure common to all sides)")
    caches = "the user's" if a.keep_caches else "empty"
    print(f"first steady: from launch to the end of iteration {a.warmup} (the first after the {a.warmup} warm-up iterations); nanoGPT and reference: when its `iter {a.warmup}:` line reached the harness; gptrain: its bench JSON's `first_steady_ms`, timed by gptrain from the command's start (process start-up before it not counted, milliseconds); cold: round 1 with {caches} kernel caches, warm: median of later rounds")
    print("ms/iter: median of the timed iterations of each round, then median over rounds; nanoGPT: its own `time` column (iteration to iteration), the others synchronised per iteration")
    print(f"logs: {a.out}", flush=True)


def parse_args(argv):
    ap = argparse.ArgumentParser(description="gptrain vs nanoGPT's train.py vs the PyTorch reference, round by round on one card", formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nanogpt", help="a nanoGPT checkout (holding train.py, model.py, configurator.py)")
    ap.add_argument("--presets", help="gptrain presets, comma-separated (default: gpt2-124m,rtx4070-40m; with --device cpu: shakespeare-char-cpu)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a gptrain config override (`gptrain config` lists the keys), applied to every side's shape")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=2, help="iterations per process left out of the timing (compilation, autotuning, allocator growth)")
    ap.add_argument("--iters", type=int, default=5, help="timed iterations per process")
    ap.add_argument("--grad-accum", type=int, help="micro-steps per iteration on every side (default: the preset's)")
    ap.add_argument("--sides", default=",".join(SIDES), help="which of gptrain,nanogpt,reference to run")
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu (float32, tiny shapes: the harness exercised without a GPU)")
    ap.add_argument("--card", help="gptrain's name for the card, for its peak (`gptrain estimate --list-devices`; default: from nvidia-smi)")
    ap.add_argument("--gptrain", help="the gptrain binary (default: target/release/gptrain, else target/gpu-check/bin/gptrain, the copy `tools/gpu_check.sh --build` packs)")
    ap.add_argument("--python", default=sys.executable, help="the Python (with PyTorch) that runs nanoGPT and the reference")
    ap.add_argument("--out", default=os.environ.get("OUT") or None, help="folder for logs and results.json (default: $OUT, else a new temporary folder)")
    ap.add_argument("--threads", type=int, help="CPU threads of every side (gptrain --threads, OMP_NUM_THREADS for PyTorch); on a shared CPU, fewer than the cores avoids OpenMP's spinning")
    ap.add_argument("--timeout", type=float, default=300, help="seconds before one process is killed")
    ap.add_argument("--budget", type=float, default=450, help="seconds for the whole run: no process starts with less than a minute of it left (default 450, to stay under 8 minutes)")
    ap.add_argument("--keep-caches", action="store_true", help="use the user's kernel caches (default: fresh ones per preset under --out, so round 1 is cold)")
    a = ap.parse_args(argv)
    a.sides = [s.strip().lower() for s in a.sides.split(",") if s.strip()]
    bad = [s for s in a.sides if s not in SIDES]
    if bad or not a.sides:
        ap.error(f"--sides takes some of {','.join(SIDES)} (got {','.join(bad) or 'none'})")
    if a.device not in ("cuda", "cpu") and not re.fullmatch(r"cuda:\d+", a.device):
        ap.error("--device is cuda, cuda:N or cpu")
    if a.rounds < 1 or a.iters < 1 or a.warmup < 0 or (a.grad_accum is not None and a.grad_accum < 1):
        ap.error("--rounds, --iters and --grad-accum must be at least 1, --warmup at least 0")
    a.presets = [p for p in (a.presets or ("shakespeare-char-cpu" if a.device == "cpu" else "gpt2-124m,rtx4070-40m")).split(",") if p]
    return a


def main(argv):
    a = parse_args(argv)
    t_start = time.monotonic()
    if "nanogpt" in a.sides:
        if not a.nanogpt:
            raise Fail("--nanogpt DIR is needed for the nanoGPT side (hint: git clone https://github.com/karpathy/nanoGPT, or --sides gptrain,reference)")
        a.nanogpt = os.path.abspath(os.path.expanduser(a.nanogpt))
        missing = [f for f in ("train.py", "model.py", "configurator.py") if not os.path.isfile(os.path.join(a.nanogpt, f))]
        if missing:
            raise Fail(f"{a.nanogpt} is not a nanoGPT checkout: no {', '.join(missing)}")
    if not a.gptrain:
        packed = os.path.join(ROOT, "target", "gpu-check", "bin", "gptrain")
        a.gptrain = os.path.join(ROOT, "target", "release", "gptrain")
        if not os.path.isfile(a.gptrain) and os.path.isfile(packed):
            a.gptrain = packed
    if not (os.path.isfile(a.gptrain) and os.access(a.gptrain, os.X_OK)):
        raise Fail(f"no gptrain binary at {a.gptrain} (hint: cargo build --release, or tools/gpu_check.sh --build, or --gptrain PATH)")
    a.out = os.path.abspath(a.out) if a.out else tempfile.mkdtemp(prefix="bench_gpu_")
    if "=" in a.out:
        raise Fail(f"--out {a.out} holds '=', which nanoGPT's configurator cannot take in --out_dir= (hint: another --out)")
    os.makedirs(a.out, exist_ok=True)
    sets = sum((["--set", kv] for kv in a.set), [])
    card = "cpu" if a.device == "cpu" else card_name(a.gptrain, sets, a.card, a.device)
    a.sampler = MemorySampler(a.device)
    ver = subprocess.run([a.python, "-c", "import torch; print(torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA device')"], capture_output=True, text=True)
    torch_line = ver.stdout.strip() if ver.returncode == 0 else f"PyTorch not importable by {a.python}"
    rev = git_rev(a.nanogpt) if a.nanogpt else ""
    grev = git_rev(ROOT)
    print(f"# bench_gpu: device {a.device} ({card}); gptrain {a.gptrain} (repository at {grev or '?'}); torch {torch_line}; nanoGPT {a.nanogpt or '-'}{f' at {rev}' if rev else ''}; logs under {a.out}", flush=True)
    a.deadline = t_start + a.budget
    done = [prepare_preset(a, preset, card) for preset in a.presets]  # a bad preset or --set stops here, before any run
    errors = []
    run_rounds(a, done)
    for p in done:
        report_preset(a, p["preset"], p["estimate"], p["results"], p["failed"])
        errors += list(p["failed"].values())
    report_all(a, done, card)
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump(dict(card=card, device=a.device, args={k: v for k, v in vars(a).items() if k != "sampler"}, presets=done), f, indent=1, default=str)
    print(f"# {time.monotonic() - t_start:.0f} s in all", flush=True)
    if errors:
        print(f"error: {errors[0]}" + (f" (and {len(errors) - 1} more above)" if len(errors) > 1 else ""), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "_reference":
        child_reference(sys.argv[2])
    elif len(sys.argv) > 2 and sys.argv[1] == "_nanogpt":
        child_nanogpt(sys.argv[2], sys.argv[3:])
    else:
        try:
            sys.exit(main(sys.argv[1:]))
        except Fail as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(1)
