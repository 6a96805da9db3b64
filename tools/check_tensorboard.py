#!/usr/bin/env python3
"""Reads a gptrain run's TensorBoard events with the official `tensorboard` package and compares
every scalar with metrics.jsonl.

    pip install tensorboard numpy
    python tools/check_tensorboard.py OUT_DIR

metrics.jsonl is appended to by every run in OUT_DIR, so for each step its latest record wins
(and a run starting at iteration N supersedes earlier records at steps >= N: see `expected`).
Each metrics value (float32 after conversion) must be in TensorBoard exactly once, at the same
step, with the same float32; a value metrics.jsonl records as null (steady ms/iter, tokens/s and
MFU during warm-up) must be absent. Nothing may be in TensorBoard that metrics.jsonl does not
have, and the resolved config must be there as text. Exits 1 on any mismatch.
"""

import json
import sys
from pathlib import Path

import numpy as np
from tensorboard.backend.event_processing import event_accumulator

# tag -> (metrics.jsonl record type, field)
TAGS = {
    "train/loss": ("iter", "loss"),
    "train/lr": ("iter", "lr"),
    "train/grad_norm": ("iter", "grad_norm"),
    "perf/steady_ms_per_iter": ("iter", "steady_ms"),
    "perf/tokens_per_sec": ("iter", "tokens_per_sec"),
    "perf/mfu": ("iter", "mfu"),
    "val/loss": ("eval", "val_loss"),
    "val/train_loss": ("eval", "train_loss"),
}
CONFIG_TAG = "config"


def expected(metrics_path):
    """tag -> {step: float32} from metrics.jsonl: the latest record per (type, step) wins, and a
    run that starts at iteration N supersedes what earlier runs recorded at steps >= N (a run
    resumed from ckpt-N logs those steps again; what a longer interrupted run logged past the
    resumed run's end is orphaned, as TensorBoard treats it), except the evaluation at N when
    the run was resumed (it does not evaluate there again)."""
    latest = {}
    for line in metrics_path.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            if r.get("type") == "start":
                n, cfg = r["iter"], r.get("config", {})
                keeps_eval = cfg.get("init_from") == "resume" and not cfg.get("eval_only")
                latest = {
                    (kind, step): rec
                    for (kind, step), rec in latest.items()
                    if step < n or (step == n and kind == "eval" and keeps_eval)
                }
            elif r.get("type") in ("iter", "eval"):
                latest[(r["type"], r["iter"])] = r
    out = {tag: {} for tag in TAGS}
    for (kind, step), r in latest.items():
        for tag, (k, field) in TAGS.items():
            if k == kind and r.get(field) is not None:
                out[tag][step] = np.float32(r[field])
    return out


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out_dir = Path(sys.argv[1])
    want = expected(out_dir / "metrics.jsonl")
    acc = event_accumulator.EventAccumulator(
        str(out_dir / "tensorboard"),
        size_guidance={event_accumulator.SCALARS: 0, event_accumulator.TENSORS: 0},
    )
    acc.Reload()
    tags = acc.Tags()
    errors = []
    extra = sorted(set(tags["scalars"]) - set(TAGS))
    if extra:
        errors.append(f"tags metrics.jsonl has no field for: {extra}")
    total = 0
    for tag, steps in want.items():
        events = acc.Scalars(tag) if tag in tags["scalars"] else []
        got = {}
        for e in events:
            if e.step in got:
                errors.append(f"{tag}: step {e.step} appears more than once")
            got[e.step] = np.float32(e.value)
        for step, v in sorted(steps.items()):
            if step not in got:
                errors.append(f"{tag}: step {step} missing (metrics.jsonl has {v})")
            elif got[step] != v and not (np.isnan(v) and np.isnan(got[step])):
                errors.append(f"{tag}: step {step} is {got[step]!r} but metrics.jsonl has {v!r}")
        for step in sorted(set(got) - set(steps)):
            errors.append(f"{tag}: step {step} ({got[step]}) is not in metrics.jsonl (or is null there)")
        total += len(steps)
        first_last = f"steps {min(steps)}..{max(steps)}" if steps else "no steps"
        print(f"{tag:26} {len(steps):5} values, {len(got):5} in TensorBoard ({first_last})")
    if CONFIG_TAG not in tags["tensors"]:
        errors.append(f"no config text (tensor tags: {tags['tensors']})")
    else:
        texts = acc.Tensors(CONFIG_TAG)
        text = texts[-1].tensor_proto.string_val[0].decode()
        meta = acc.SummaryMetadata(CONFIG_TAG)
        if meta.plugin_data.plugin_name != "text" or "n_layer" not in text:
            errors.append(f"config text is not a text summary with the config: {meta} {text[:80]!r}")
        print(f"{CONFIG_TAG:26} {len(texts):5} text summaries (steps {[t.step for t in texts]}), {len(text.splitlines())} lines, plugin {meta.plugin_data.plugin_name!r}")
    files = sorted(p.name for p in (out_dir / "tensorboard").glob("events.out.tfevents.*"))
    print(f"{len(files)} events file(s) in {out_dir / 'tensorboard'}")
    for e in errors:
        print("MISMATCH:", e)
    if errors:
        print(f"FAIL: {len(errors)} mismatch(es)")
        sys.exit(1)
    print(f"OK: all {total} scalars equal metrics.jsonl (latest record per step), each once; config text present")


if __name__ == "__main__":
    main()
