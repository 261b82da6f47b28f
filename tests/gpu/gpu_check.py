"""`make gpu-check`: what the CPU test suite cannot see, checked on the GPU you train on, in a few minutes.

Each check prints PASS / FAIL / SKIP with its figure; the report also goes to outputs/gpu-check/report.md. Checks
that need CUDA (or flash-attn, bitsandbytes, liger-kernel, DeepSpeed) say SKIP with the reason where those are
missing; `--cpu` runs the ones a CPU can run (the test suite does, so the script itself stays tested).

  packing-sdpa        packed batch on the device through sftforge_varlen: per-sample loss == unpacked, and no
                      host sync from sftforge code in forward + backward (CUDA sync debug mode)
  packing-flash       the same through flash-attn's varlen kernel (bf16)
  packed==unpacked    the summed token loss of a packed batch == the padded batch's
  bf16-full-ft        `sftforge train` with bf16: fp32 master weights chosen, weights fp32 while training, loss falls
  fp16-guard          fp16 loss scaling from a scale that overflows: the scaler skips steps, the guard never stops
  qlora-merge         QLoRA 4-bit training, merge, parity of merged vs base+adapter logits
  liger               use_liger_kernel: first-step loss == without Liger
  zero3               DeepSpeed ZeRO-3 on all visible GPUs through accelerate: losses == one process
  cuda-tests          the CUDA-only test files (varlen on the GPU: no host sync in a layer under CUDA's sync
                      debug mode "error", generation with left padding == sdpa, flash-attn varlen)
  throughput          tokens/s and MFU from a bf16 run's log
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "examples" / "demo" / "train.jsonl"


@dataclass
class Result:
    name: str
    status: str  # PASS | FAIL | SKIP
    figure: str


class Skip(Exception):  # noqa: N818 — a check's way to say why it cannot run here
    pass


class Checks:
    def __init__(self, device: str, work: Path) -> None:
        self.device, self.work = device, work
        self._model: Path | None = None

    # ------------------------------------------------------------------ shared pieces

    @property
    def cuda(self) -> bool:
        return self.device == "cuda"

    def need_cuda(self) -> None:
        if not self.cuda:
            raise Skip("needs a CUDA GPU")

    @staticmethod
    def need(module: str, extra: str) -> None:
        if importlib.util.find_spec(module) is None:
            raise Skip(f"{module} is not installed (pip install -e '.[{extra}]')")

    def model(self) -> Path:
        """A small Qwen2 (hidden 256, 4 layers) with the demo's tokenizer: big enough for real kernels."""
        if self._model is None:
            from sftforge.testing import build_tiny_model

            texts = [line for line in DATA.read_text(encoding="utf-8").splitlines()]
            self._model = build_tiny_model(self.work / "model", "qwen2", texts=texts, hidden_size=256,
                                           num_layers=4, num_heads=8, num_kv_heads=2, intermediate_size=768)  # fmt: skip
        return self._model

    def train(self, name: str, *args: str, launcher: list[str] | None = None) -> tuple[Path, str]:
        """`sftforge train` on the demo data in a subprocess (the real CLI); returns (output_dir, stdout)."""
        out = self.work / name
        cmd = [*(launcher or [sys.executable, "-m"]), "sftforge", "train", "--model_name_or_path", str(self.model()),
               "--train_data_path", str(DATA), "--output_dir", str(out), "--max_steps", "20", "--logging_steps", "1",
               "--per_device_train_batch_size", "8", "--learning_rate", "1e-3", "--save_strategy", "no",
               "--report_to", "none", "--disable_tqdm", "true", "--seed", "0", *args]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600,
                              env=dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false"))  # fmt: skip
        if proc.returncode != 0:
            raise AssertionError(f"exit {proc.returncode}: {(proc.stdout + proc.stderr)[-1500:]}")
        return out, proc.stdout

    @staticmethod
    def losses(out: Path) -> list[float]:
        return [e["loss"] for e in json.loads((out / "log_history.json").read_text()) if "loss" in e]

    def packed_and_padded(self, attn: str, dtype: Any) -> tuple[Any, Any, Any, Any]:
        """(model, packed batch, padded batch, rows) on the device."""
        import torch
        from transformers import AutoModelForCausalLM

        from sftforge.data.collate import FlatteningCollator, PaddingCollator
        from sftforge.model.varlen import packed_attention_backend

        model = AutoModelForCausalLM.from_pretrained(self.model(), dtype=dtype).to(self.device)
        model.set_attn_implementation(packed_attention_backend(attn))
        gen = torch.Generator().manual_seed(0)
        vocab = model.config.vocab_size
        rows = []
        for n in (511, 3, 200, 64, 130, 17, 300, 45):
            ids = torch.randint(3, vocab, (n,), generator=gen).tolist()
            rows.append({"input_ids": ids, "labels": ids})
        packed = _to(FlatteningCollator()(rows), self.device)
        padded = _to(PaddingCollator(0)(rows), self.device)
        return model, packed, padded, rows

    # ------------------------------------------------------------------ the checks

    def packing_sdpa(self) -> str:
        import torch

        model, packed, _, rows = self.packed_and_padded("sdpa", torch.float32)
        alone = _per_sample_unpacked(model, rows, self.device)
        syncs = _count_syncs(lambda: _per_sample_packed(model, packed), self.cuda)
        got = _per_sample_packed(model, packed)
        diff = max(abs(a - b) / max(abs(b), 1e-6) for a, b in zip(got, alone, strict=True))
        assert diff <= 1e-4, f"per-sample loss differs by {diff:.2e} (relative)"
        started = time.perf_counter()
        for _ in range(3):
            sum(_per_sample_packed(model, packed, keep_graph=True)).backward()
        _sync(self.cuda)
        ms = (time.perf_counter() - started) / 3 * 1000
        if syncs is not None:
            assert syncs["sftforge"] == 0, f"host syncs from sftforge code: {syncs}"
            sync_text = f"; host syncs in fwd+bwd: sftforge {syncs['sftforge']}, others {syncs['other']}"
        else:
            sync_text = "; host syncs: only countable on CUDA"
        return f"max rel. per-sample loss diff {diff:.1e} (≤1e-4); fwd+bwd {ms:.0f} ms/batch{sync_text}"

    def packing_flash(self) -> str:
        import torch

        self.need_cuda()
        self.need("flash_attn", "flash-attn")
        model, packed, _, rows = self.packed_and_padded("flash_attention_2", torch.bfloat16)
        alone = _per_sample_unpacked(model, rows, self.device)
        got = _per_sample_packed(model, packed)
        diff = max(abs(a - b) / max(abs(b), 1e-6) for a, b in zip(got, alone, strict=True))
        assert diff <= 2e-2, f"per-sample loss differs by {diff:.2e} (relative, bf16)"
        return f"max rel. per-sample loss diff {diff:.1e} (bf16, ≤2e-2)"

    def packed_equals_unpacked(self) -> str:
        import torch

        model, packed, padded, _ = self.packed_and_padded("sdpa", torch.float32)
        with torch.no_grad():
            a = _summed_loss(model, packed)
            model.set_attn_implementation("sdpa")  # the padded reference through the model's own attention
            b = _summed_loss(model, padded)
        diff = abs(a - b) / abs(b)
        assert diff <= 1e-5, f"summed loss packed {a} vs padded {b}"
        return f"summed token loss packed {a:.4f} vs padded {b:.4f} (rel. diff {diff:.1e})"

    def bf16_full_ft(self) -> str:
        self.need_cuda()
        import torch

        if not torch.cuda.is_bf16_supported():
            raise Skip("this GPU has no bf16")
        out, stdout = self.train("bf16", "--bf16", "true")
        assert "fp32 master weights" in stdout, "the fp32-master decision line is missing"
        from safetensors import safe_open

        with safe_open(str(out / "model.safetensors"), "pt") as f:
            dtypes = {str(f.get_slice(k).get_dtype()) for k in f.keys()}  # noqa: SIM118
        losses = self.losses(out)
        assert losses[-1] < losses[0], f"loss did not fall: {losses[0]} → {losses[-1]}"
        return f"weights trained in fp32 (saved {', '.join(sorted(dtypes))}); loss {losses[0]:.3f} → {losses[-1]:.3f}"

    def fp16_guard(self) -> str:
        self.need_cuda()
        from transformers import TrainerCallback

        from sftforge.config import load_config
        from sftforge.model.load import load_model
        from sftforge.train.run import build_trainer, prepare_tokenized_data

        cfg = load_config(None, ["--model_name_or_path", str(self.model()), "--train_data_path", str(DATA),
                                 "--output_dir", str(self.work / "fp16"), "--max_steps", "20", "--fp16", "true",
                                 "--bf16", "false", "--per_device_train_batch_size", "8", "--save_strategy", "no",
                                 "--report_to", "none", "--disable_tqdm", "true", "--logging_steps", "5"])  # fmt: skip
        bundle, data = prepare_tokenized_data(cfg)
        trainer = build_trainer(cfg, bundle, data, load_model(cfg.model, False))
        scales: list[float] = []

        class Scale(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                scales.append(trainer.accelerator.scaler.get_scale())

        trainer.add_callback(Scale())
        trainer.accelerator.scaler._init_scale = (
            2.0**24
        )  # overflows fp16 gradients on purpose (private, lazy)
        trainer.train()
        skipped = sum(1 for a, b in zip([2.0**24, *scales], scales, strict=False) if b < a)
        assert trainer.state.global_step == 20, "the run did not finish"
        assert skipped >= 1, "the scaler never skipped a step: the check did not exercise overflow"
        return f"20 steps done; the scaler skipped {skipped} overflowing step(s), scale 2^24 → {scales[-1]:g}"

    def qlora_merge(self) -> str:
        self.need_cuda()
        self.need("bitsandbytes", "bitsandbytes")
        self.need("peft", "peft")
        out, _ = self.train(
            "qlora", "--finetuning_type", "qlora", "--lora_r", "8", "--merge_after_train", "true"
        )
        report = json.loads((out / "merged" / "merge_report.json").read_text())
        diff = report["merge_max_abs_logit_diff"]
        assert diff <= 1e-3 and report["merge_greedy_match"], f"merge parity {diff}"
        return f"merged vs base+adapter: max |logit diff| {diff:.1e}, greedy tokens equal"

    def liger(self) -> str:
        self.need_cuda()
        self.need("liger_kernel", "liger")
        plain, _ = self.train("no-liger", "--bf16", "true", "--max_steps", "3")
        liger, _ = self.train("liger", "--bf16", "true", "--max_steps", "3", "--use_liger_kernel", "true")
        a, b = self.losses(plain)[0], self.losses(liger)[0]
        assert abs(a - b) <= 2e-2 * abs(a), f"first-step loss {a} vs {b} with Liger"
        return f"first-step loss {a:.4f} without, {b:.4f} with Liger"

    def zero3(self) -> str:
        self.need_cuda()
        self.need("deepspeed", "deepspeed")
        import torch

        n = torch.cuda.device_count()
        launcher = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                    str(REPO / "configs/accelerate/zero3.yaml"), "--num_processes", str(n), "-m"]  # fmt: skip
        common = ("--bf16", "true", "--max_steps", "6", "--train_sampling_strategy", "sequential")
        one, _ = self.train("zero3-reference", *common, "--per_device_train_batch_size", str(2 * n))
        many, _ = self.train("zero3", *common, "--per_device_train_batch_size", "2", launcher=launcher)
        a, b = self.losses(one), self.losses(many)
        diff = max(abs(x - y) for x, y in zip(a, b, strict=True))
        assert diff <= 2e-2, f"ZeRO-3 losses differ from one process by {diff}"
        return f"{n} GPU(s): per-step loss max diff vs one process {diff:.1e} (bf16); output folder saved"

    def cuda_tests(self) -> str:
        """The test files written for CUDA (skipped by the CPU suite): tests/model/test_varlen_cuda.py."""
        self.need_cuda()
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *CUDA_TEST_FILES],
                              capture_output=True, text=True, cwd=REPO, timeout=600)  # fmt: skip
        summary = (proc.stdout.strip().splitlines() or ["no output"])[-1]
        assert proc.returncode == 0, proc.stdout[-1500:]
        assert " passed" in summary, summary
        return summary

    def throughput(self) -> str:
        args = ("--bf16", "true") if self.cuda else ("--max_steps", "4")  # a CPU only shows that it is logged
        out, _ = self.train("throughput", "--packing", "true", "--max_length", "512", *args)
        logged = [e for e in json.loads((out / "log_history.json").read_text()) if "loss" in e]
        tokens = logged[-1]["tokens_per_s"]
        assert tokens > 0
        mfu = logged[-1].get("mfu")
        if self.cuda:
            assert mfu is not None and 0 < mfu < 1, (
                f"MFU {mfu} (is this GPU in PEAK_TFLOPS? set SFTFORGE_PEAK_TFLOPS)"
            )
            return f"{tokens:,.0f} tokens/s, MFU {mfu:.1%} (a small model: low MFU is expected)"
        return f"{tokens:,.0f} tokens/s (no MFU on CPU)"


CHECKS: dict[str, Callable[[Checks], str]] = {
    "packing-sdpa": Checks.packing_sdpa,
    "packing-flash": Checks.packing_flash,
    "packed==unpacked": Checks.packed_equals_unpacked,
    "bf16-full-ft": Checks.bf16_full_ft,
    "fp16-guard": Checks.fp16_guard,
    "qlora-merge": Checks.qlora_merge,
    "liger": Checks.liger,
    "zero3": Checks.zero3,
    "cuda-tests": Checks.cuda_tests,
    "throughput": Checks.throughput,
}
CUDA_TEST_FILES = ("tests/model/test_varlen_cuda.py",)


# ---------------------------------------------------------------------- helpers


def _to(batch: dict[str, Any], device: str) -> dict[str, Any]:
    """Move a batch to the device the way the Trainer does (tensors, also inside lists and tuples)."""
    import torch

    def move(x: Any) -> Any:
        if isinstance(x, torch.Tensor):
            return x.to(device)
        if isinstance(x, (list, tuple)):
            return type(x)(move(v) for v in x)
        if isinstance(x, dict):  # the collator's bucket layout for sftforge_varlen
            return {k: move(v) for k, v in x.items()}
        return x

    return {k: move(v) for k, v in batch.items() if k != "sources"}


def _sync(cuda: bool) -> None:
    if cuda:
        import torch

        torch.cuda.synchronize()


def _per_sample_packed(model: Any, batch: dict[str, Any], keep_graph: bool = False) -> list[Any]:
    import torch
    import torch.nn.functional as F

    context = torch.enable_grad() if keep_graph else torch.no_grad()
    with context:
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits[0].float()
    labels = batch["labels"][0]
    bounds = batch["cu_seq_lens_q"].tolist()
    out = []
    for s, e in zip(bounds[:-1], bounds[1:], strict=True):
        loss = F.cross_entropy(logits[s : e - 1], labels[s + 1 : e], ignore_index=-100, reduction="sum")
        out.append(loss if keep_graph else loss.item())
    return out


def _per_sample_unpacked(model: Any, rows: list[dict], device: str) -> list[float]:
    import torch
    import torch.nn.functional as F

    out = []
    with torch.no_grad():
        for r in rows:
            ids = torch.tensor([r["input_ids"]], device=device)
            logits = model(input_ids=ids).logits[0].float()
            out.append(F.cross_entropy(logits[:-1], ids[0, 1:], reduction="sum").item())
    return out


def _summed_loss(model: Any, batch: dict[str, Any]) -> float:
    import torch.nn.functional as F

    logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits.float()
    labels = batch["labels"]
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100,
                           reduction="sum").item()  # fmt: skip


def _count_syncs(fn: Callable[[], Any], cuda: bool) -> dict[str, int] | None:
    """Host syncs during fn on CUDA (torch's sync debug mode warns at each), by whether sftforge code asked."""
    if not cuda:
        return None
    import torch

    import sftforge

    package = str(Path(sftforge.__file__).resolve().parent)
    counts = {"sftforge": 0, "other": 0}
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    for w in caught:
        if "synchroniz" not in str(w.message).lower():
            continue
        counts["sftforge" if str(w.filename).startswith(package) else "other"] += 1
    return counts


def run(names: list[str], device: str) -> list[Result]:
    results = []
    with tempfile.TemporaryDirectory(prefix="sftforge-gpu-check-") as tmp:
        checks = Checks(device, Path(tmp))
        for name in names:
            started = time.perf_counter()
            try:
                figure, status = CHECKS[name](checks), "PASS"
            except Skip as e:
                figure, status = str(e), "SKIP"
            except Exception as e:  # noqa: BLE001 — a failed check is reported, the others still run
                figure, status = f"{type(e).__name__}: {e}"[:600], "FAIL"
                traceback.print_exc()
            results.append(Result(name, status, f"{figure} [{time.perf_counter() - started:.0f} s]"))
            print(f"{status:4}  {name:17} {results[-1].figure}", flush=True)
    return results


def report(results: list[Result], device: str) -> str:
    import torch

    import sftforge

    where = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    lines = [f"# sftforge gpu-check — {time.strftime('%Y-%m-%d %H:%M')}, {where}, torch {torch.__version__}, "
             f"sftforge {getattr(sftforge, '__version__', '?')}", "", "| check | result | figure |", "|---|---|---|"]  # fmt: skip
    lines += [f"| {r.name} | {r.status} | {r.figure} |" for r in results]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cpu", action="store_true", help="run on the CPU: CUDA-only checks say SKIP")
    parser.add_argument("--only", nargs="*", choices=list(CHECKS), help="run these checks only")
    parser.add_argument("--report", default=str(REPO / "outputs" / "gpu-check" / "report.md"))
    args = parser.parse_args(argv)
    import torch

    device = "cpu" if args.cpu else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("gpu-check: no CUDA GPU visible (torch.cuda.is_available() is False; CUDA_VISIBLE_DEVICES="
              f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}, torch {torch.__version__}). Every check needs "
              "one except those `--cpu` runs; the CPU test suite covers the rest. Nothing to do.")  # fmt: skip
        return 0
    results = run(args.only or list(CHECKS), device)
    text = report(results, device)
    path = Path(args.report)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    print(f"\n{sum(r.status == 'PASS' for r in results)} passed, {sum(r.status == 'FAIL' for r in results)} "
          f"failed, {sum(r.status == 'SKIP' for r in results)} skipped; report: {path}")  # fmt: skip
    return 1 if any(r.status == "FAIL" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
