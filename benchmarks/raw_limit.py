"""The raw limit: forward + backward (+ AdamW step) of the model on fully packed rows of the dataset's real tokens.

Run by bench.py in its own process (same thread settings as the trainers). The dataset's examples are tokenized
exactly as `sftforge train` does (same recipe + overrides), every real token is concatenated, cut into rows of
`max_length` and stacked `per_device_train_batch_size` rows per batch — no padding, no packing search, no data
loader, no Trainer, plain causal sdpa over whole rows (no per-sample isolation, which only removes work). The last
batch is a partial one, as in a real epoch.

Per batch we time (perf_counter, after `warmup` untimed batches; by default every full batch of the epoch):
  fwd_bwd   model(input_ids, labels) + loss.backward()
  step      fwd_bwd + AdamW(lr from the recipe).step() + zero_grad(set_to_none=True)
and report median seconds per full batch × batches per epoch (+ the partial batch scaled by its token share)
as seconds per epoch (the median rather than the sum: robust to a burst of other load on a shared machine), and
the measured sum over the timed batches. `--batches N` times only N batches (quicker, noisier).

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time


def main() -> int:
    ap = argparse.ArgumentParser(allow_abbrev=False)
    ap.add_argument("recipe")
    ap.add_argument("--batches", type=int, default=0, help="timed batches (0: every batch of the epoch)")
    ap.add_argument("--warmup", type=int, default=1)
    args, overrides = ap.parse_known_args()  # the rest: `sftforge train` overrides (--key value)

    import torch
    from transformers import AutoModelForCausalLM

    from sftforge.config import load_config
    from sftforge.train.run import prepare_tokenized_data

    cfg = load_config(args.recipe, overrides)
    _, data = prepare_tokenized_data(cfg)
    seq = cfg.data.max_length
    bs = cfg.training.per_device_train_batch_size
    torch.manual_seed(cfg.training.seed)

    ids = [t for e in data.train for t in e.input_ids]
    labels = [t for e in data.train for t in e.labels]
    total = len(ids)
    per_batch = seq * bs
    full_batches, rest = divmod(total, per_batch)
    epoch_batches = full_batches + rest / per_batch  # the partial last batch counted by its token share
    n_rows = full_batches * bs
    rows = torch.tensor(ids[: n_rows * seq], dtype=torch.long).view(n_rows, seq)
    row_labels = torch.tensor(labels[: n_rows * seq], dtype=torch.long).view(n_rows, seq)
    if full_batches == 0:
        raise SystemExit("raw_limit: the dataset has fewer tokens than one batch")

    model = AutoModelForCausalLM.from_pretrained(
        cfg.model.model_name_or_path, dtype=torch.float32, attn_implementation="sdpa"
    )
    model.config.use_cache = False
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.training.learning_rate, weight_decay=0.0)

    timed = full_batches if args.batches <= 0 else min(args.batches, full_batches)
    fwd_bwd: list[float] = []
    step: list[float] = []
    for i in range(args.warmup + timed):
        b = i % full_batches
        x = rows[b * bs : (b + 1) * bs]
        y = row_labels[b * bs : (b + 1) * bs]
        t0 = time.perf_counter()
        out = model(input_ids=x, labels=y)
        out.loss.backward()
        t1 = time.perf_counter()
        opt.step()
        opt.zero_grad(set_to_none=True)
        t2 = time.perf_counter()
        if i >= args.warmup:
            fwd_bwd.append(t1 - t0)
            step.append(t2 - t0)
    med_fb, med_step = statistics.median(fwd_bwd), statistics.median(step)
    print(
        json.dumps(
            {
                "dataset_tokens": total,
                "batch_shape": [bs, seq],
                "batches_per_epoch": round(epoch_batches, 3),
                "timed_batches": timed,
                "fwd_bwd_s_per_batch": round(med_fb, 4),
                "step_s_per_batch": round(med_step, 4),
                "fwd_bwd_s_per_epoch": round(med_fb * epoch_batches, 2),
                "step_s_sum_timed": round(sum(step), 2),  # measured, the timed full batches only
                "raw_limit_s": round(med_step * epoch_batches, 2),  # fwd + bwd + AdamW step, per epoch
                "raw_tokens_per_s": round(per_batch / med_step, 1),
                "params": sum(p.numel() for p in model.parameters()),
                "torch_threads": torch.get_num_threads(),
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
