"""Loads a gptrain checkpoint into the PyTorch reference (and, when `transformers` is installed,
into Hugging Face's GPT2LMHeadModel.from_pretrained) and prints the loss of 12 fixed windows of
the dataset's val.bin, to compare with gptrain's loss on the same batch.

    python tools/check_checkpoint.py OUT_DIR/ckpt-002000 DATA_DIR
"""

import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reference import Config, load_hf  # noqa: E402


def main(ck, data):
    m = json.load(open(os.path.join(ck, "train_state.json")))["model"]
    cfg = Config(n_layer=m["n_layer"], n_head=m["n_head"], n_embd=m["n_embd"], block_size=m["block_size"], vocab_size=m["vocab_size"], padded_vocab_size=m["padded_vocab_size"], bias=m["bias"])
    meta = json.load(open(os.path.join(data, "meta.json"))) if os.path.exists(os.path.join(data, "meta.json")) else {"token_bytes": 2}
    val = np.fromfile(os.path.join(data, "val.bin"), dtype=np.uint16 if meta["token_bytes"] == 2 else np.uint32).astype(np.int64)
    T = cfg.block_size
    offs = [k * 1000 for k in range(12)]
    x = torch.tensor(np.stack([val[o : o + T] for o in offs]))
    y = torch.tensor(np.stack([val[o + 1 : o + 1 + T] for o in offs]))
    with torch.no_grad():
        _, loss = load_hf(os.path.join(ck, "model.safetensors"), cfg)(x, y)
    print(f"reference loss {loss.item():.7f}")
    try:
        from transformers import GPT2LMHeadModel
    except ImportError:
        print("transformers not installed: skipping GPT2LMHeadModel")
        return
    hf = GPT2LMHeadModel.from_pretrained(ck)
    with torch.no_grad():
        logits = hf(x).logits[..., : cfg.vocab_size]
    l2 = torch.nn.functional.cross_entropy(logits.reshape(-1, cfg.vocab_size), y.reshape(-1))
    print(f"transformers GPT2LMHeadModel loss {l2.item():.7f}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
