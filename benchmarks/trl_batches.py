"""Real (non-pad) token fraction of TRL's batches, measured by replaying TRL's own data loader without training.

peer_trl.py reports only the non-pad tokens it fed (`seen_tokens`), not the padded total. This script builds the
same SFTTrainer the peer builds (its own `read_rows` / `to_messages` / ChatML-with-generation-markers template,
imported from the peer file, and the same SFTConfig values), then iterates `trainer.get_train_dataloader()` for one
epoch: the Trainer seeds in __init__ (seed 42) and accelerate's SeedableRandomSampler draws the epoch-0 order from
that seed, so these are the batches the peer trains on. No forward pass is run.

For each batch: real = non-pad tokens (attention_mask sum; padding-free batches have no pads, so all tokens),
total = elements of the input_ids tensor. Also the fill of padding-free (bfd) batches: real / (batch × max_length).
The harness checks `real_tokens` against the peer's `seen_tokens` to confirm the replay matches the real run.

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import sys
import tempfile


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--peer", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--packing", choices=["none", "bfd"], default="none")
    ap.add_argument("--per_device_train_batch_size", type=int, default=8)
    ap.add_argument("--max_length", type=int, default=512)
    ap.add_argument("--learning_rate", type=float, default=1e-4)
    ap.add_argument("--seed", type=int, default=42)
    args = ap.parse_args()

    spec = importlib.util.spec_from_file_location("peer_trl", args.peer)
    peer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(peer)

    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tok = AutoTokenizer.from_pretrained(args.model)
    if not tok.chat_template or not re.search(r"\{%-?\s*generation\s*-?%\}", tok.chat_template):
        tok.chat_template = peer.CHATML_TRAINING
    model = AutoModelForCausalLM.from_pretrained(args.model, attn_implementation="sdpa")
    ds = Dataset.from_list([peer.to_messages(r) for r in peer.read_rows(args.data)])
    # The values peer_trl.py passes (keep in sync with ../shared/bench/peer_trl.py).
    cfg = SFTConfig(
        output_dir=tempfile.mkdtemp(prefix="trl_replay_"),
        per_device_train_batch_size=args.per_device_train_batch_size,
        gradient_accumulation_steps=1,
        num_train_epochs=1.0,
        max_steps=-1,
        learning_rate=args.learning_rate,
        max_length=args.max_length,
        assistant_only_loss=True,
        packing=args.packing == "bfd",
        bf16=False,
        gradient_checkpointing=False,
        use_cpu=True,
        dataloader_num_workers=0,
        save_strategy="no",
        report_to="none",
        logging_steps=1,
        seed=args.seed,
        disable_tqdm=True,
    )
    trainer = SFTTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok)
    lengths = [len(x) for x in trainer.train_dataset["input_ids"]]
    real = total = batches = 0
    fractions: list[float] = []
    for batch in trainer.get_train_dataloader():
        n = batch["input_ids"].numel()
        r = int(batch["attention_mask"].sum()) if "attention_mask" in batch else n
        real, total, batches = real + r, total + n, batches + 1
        fractions.append(r / n)
    capacity = batches * args.per_device_train_batch_size * args.max_length
    print(
        json.dumps(
            {
                "packing": args.packing,
                "rows": len(ds),
                "examples": len(lengths),
                "dataset_tokens": sum(lengths),
                "batches": batches,
                "real_tokens": real,
                "total_tokens": total,
                "real_token_fraction": round(real / total, 4),
                "min_batch_fraction": round(min(fractions), 4),
                "fill_of_batch_capacity": round(real / capacity, 4),  # real / (batches × bs × max_length)
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
