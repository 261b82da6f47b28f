"""MoE router aux (load-balancing) loss on tiny Qwen2-MoE and Mixtral: on by default with the model's coefficient,
added once per optimizer step (the mean over its micro-batches, not once per micro-batch), over real tokens only,
reaching the router, logged (aux_loss, router_load_max/min), and off with router_aux_loss_coef: 0 or
output_router_logits: false."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import TrainerCallback

from sftforge.config import load_config
from sftforge.errors import ConfigError
from sftforge.model.load import load_model
from sftforge.train.run import build_trainer, prepare_tokenized_data, run_training

ARCHS = ("qwen2_moe", "mixtral")


def _data(tmp_path: Path) -> Path:
    answers = ["ok", "a longer answer " * 5, "yes", "two words", "x " * 12, "fine", "1 2 3 4", "z"]
    rows = [{"messages": [{"role": "user", "content": f"Q{i}?"}, {"role": "assistant", "content": a}]}
            for i, a in enumerate(answers)]  # fmt: skip
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def _cfg(tmp_path: Path, model_dir: Path, *extra: str):
    return load_config(None, ["--model_name_or_path", str(model_dir), "--train_data_path", str(_data(tmp_path)),
                              "--output_dir", str(tmp_path / "out"), "--max_steps", "1", "--report_to", "none",
                              "--save_strategy", "no", "--disable_tqdm", "true", "--logging_steps", "1",
                              "--train_sampling_strategy", "sequential", *extra])  # fmt: skip


def _switch_aux(router_logits, num_experts: int, top_k: int, mask: torch.Tensor | None) -> torch.Tensor:
    """Switch-Transformer balance loss written out here: E · Σ_e (routed share_e · mean router prob_e), over
    every MoE layer's real tokens."""
    probs = torch.cat([F.softmax(layer.float(), dim=-1) for layer in router_logits])
    chosen = torch.cat(
        [torch.topk(F.softmax(layer.float(), -1), top_k, -1).indices for layer in router_logits]
    )
    w = torch.ones(probs.shape[0]) if mask is None else mask.reshape(-1).float().repeat(len(router_logits))
    routed = F.one_hot(chosen, num_experts).float().sum(1)  # [rows, E]
    share = (routed * w[:, None]).sum(0) / w.sum()
    prob = (probs * w[:, None]).sum(0) / w.sum()
    return num_experts * (share * prob).sum()


class Record:
    """Wraps trainer.compute_loss: each training micro-batch's inputs, its num_items_in_batch and the loss."""

    def __init__(self, trainer) -> None:
        self.calls: list[tuple[dict, object, torch.Tensor]] = []
        inner = trainer.compute_loss

        def compute_loss(model, inputs, return_outputs=False, num_items_in_batch=None):
            result = inner(
                model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
            )
            if trainer._in_training_step:
                loss = result[0] if isinstance(result, tuple) else result
                kept = {k: v.clone() if torch.is_tensor(v) else v for k, v in inputs.items()}
                self.calls.append((kept, num_items_in_batch, loss.detach().clone()))
            return result

        trainer.compute_loss = compute_loss


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("packing", [False, True])
def test_trained_loss_is_lm_plus_coef_times_aux_once_per_step(tmp_path, make_tiny_model, arch, packing):
    """Two micro-batches per step (padded: 2 rows each; packed: one row of several samples each), learning rate 0
    (weights stay the initial ones): every micro-batch's trained loss is its summed token CE / the step's trained
    tokens + coef × its aux / 2, recomputed here from the model's outputs (1e-6); so the step optimises
    LM mean + coef × mean aux."""
    model_dir = make_tiny_model(arch)
    batch = ["--per_device_train_batch_size", "1", "--max_length", "64"] if packing else [
        "--per_device_train_batch_size", "2"]  # fmt: skip
    cfg = _cfg(tmp_path, model_dir, *batch, "--gradient_accumulation_steps", "2", "--learning_rate", "0",
               "--packing", str(packing).lower())  # fmt: skip
    bundle, data = prepare_tokenized_data(cfg)
    model = load_model(cfg.model, False)
    coef = model.config.router_aux_loss_coef
    trainer = build_trainer(cfg, bundle, data, model)
    assert trainer.moe_aux is not None and trainer.moe_aux.coef == coef > 0  # on by default, the model's coef
    rec = Record(trainer)
    trainer.train()
    assert len(rec.calls) == 2
    n_items = sum(int((inp["labels"][:, 1:] != -100).sum()) for inp, _, _ in rec.calls)
    assert int(rec.calls[0][1]) == n_items
    top_k = model.config.num_experts_per_tok
    experts = getattr(model.config, "num_experts", None) or model.config.num_local_experts
    model.eval()  # no dropout in tiny models either way; the weights are the step's (lr 0)
    for inputs, _, loss in rec.calls:
        feed = {k: v for k, v in inputs.items() if k not in ("labels", "output_router_logits")}
        with torch.no_grad():
            out = model(**feed, output_router_logits=True)
        labels = inputs["labels"][:, 1:]
        lm = F.cross_entropy(out.logits[:, :-1].float().flatten(0, 1), labels.flatten(), ignore_index=-100,
                             reduction="sum") / n_items  # fmt: skip
        mask = inputs.get("attention_mask")
        aux = _switch_aux(out.router_logits, experts, top_k, mask)
        assert abs(float(aux) - float(out.aux_loss)) < 1e-6  # transformers' aux = the formula, pads excluded
        expected = lm + coef * aux / 2
        assert abs(float(loss) - float(expected)) < 1e-6, (float(loss), float(lm), float(aux))
        print(
            f"{arch} packing={packing}: trained {float(loss):.7f} = LM {float(lm):.7f} + {coef} x aux "
            f"{float(aux):.6f} / 2 (|diff| {abs(float(loss) - float(expected)):.1e})"
        )
    assert "aux_loss" in trainer.state.log_history[0]
    # the model's own per-forward addition is back after training (it was off during it)
    assert model.router_aux_loss_coef == coef


@pytest.mark.parametrize("arch", ARCHS)
def test_pads_do_not_count(tmp_path, make_tiny_model, arch):
    """The aux value of a padded batch equals the aux of the same samples packed padding-free."""
    model_dir = make_tiny_model(arch)
    values = {}
    for packing in ("false", "true"):
        cfg = _cfg(tmp_path / packing, model_dir, "--per_device_train_batch_size", "8", "--learning_rate", "0",
                   "--packing", packing)  # fmt: skip
        bundle, data = prepare_tokenized_data(cfg)
        trainer = build_trainer(cfg, bundle, data, load_model(cfg.model, False))
        rec = Record(trainer)
        trainer.train()
        ((inputs, _, _),) = rec.calls
        if packing == "false":
            assert (inputs["attention_mask"] == 0).any()  # there are pads to leave out
        values[packing] = trainer.state.log_history[0]["aux_loss"]
    print(f"{arch}: aux padded {values['false']} vs packed {values['true']}")
    assert values["false"] == pytest.approx(values["true"], abs=2e-5)


class GradCapture(TrainerCallback):
    def __init__(self) -> None:
        self.grads: dict[str, torch.Tensor] = {}

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if not self.grads:
            self.grads = {
                n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None
            }


def _router_grads(tmp_path: Path, model_dir: Path, *extra: str) -> tuple[dict[str, torch.Tensor], list[dict]]:
    cfg = _cfg(tmp_path, model_dir, "--per_device_train_batch_size", "4", "--max_grad_norm", "0", *extra)
    bundle, data = prepare_tokenized_data(cfg)
    model = load_model(cfg.model, False)
    experts = getattr(model.config, "num_experts", None) or model.config.num_local_experts
    routers = {n for n, p in model.named_parameters() if p.dim() == 2 and p.shape[0] == experts}
    trainer = build_trainer(cfg, bundle, data, model)
    capture = GradCapture()
    trainer.add_callback(capture)
    trainer.train()
    assert routers
    return {n: g for n, g in capture.grads.items() if n in routers}, trainer.state.log_history


@pytest.mark.parametrize("arch", ARCHS)
def test_aux_gradient_reaches_the_router_and_switches_off(tmp_path, make_tiny_model, arch):
    model_dir = make_tiny_model(arch)
    on, logs_on = _router_grads(tmp_path / "on", model_dir, "--router_aux_loss_coef", "0.5")
    off, logs_off = _router_grads(tmp_path / "off", model_dir, "--router_aux_loss_coef", "0")
    off2, logs_off2 = _router_grads(tmp_path / "off2", model_dir, "--output_router_logits", "false")
    for name in on:
        assert float((on[name] - off[name]).abs().max()) > 1e-6, name  # the aux term moves every router
        assert torch.equal(off[name], off2[name])  # both ways of turning it off are the same
    first = logs_on[0]
    assert first["aux_loss"] > 0 and first["router_load_max"] >= 1.0 >= first["router_load_min"] >= 0.0
    for logs in (logs_off, logs_off2):
        assert not any("aux_loss" in e or "router_load_max" in e for e in logs)


def test_alias_and_refusal_on_a_dense_model(tmp_path, make_tiny_model):
    cfg = _cfg(tmp_path, make_tiny_model("qwen2_moe"), "--aux_loss_alpha", "0.25")
    assert cfg.model.router_aux_loss_coef == 0.25
    cfg = _cfg(tmp_path, make_tiny_model("qwen2_moe"), "--moe_aux_loss_coef", "0.125")
    assert cfg.model.router_aux_loss_coef == 0.125
    cfg = _cfg(tmp_path, make_tiny_model("qwen2"), "--router_aux_loss_coef", "0.01")
    with pytest.raises(ConfigError, match="has no router aux loss to set"):
        run_training(cfg)


def test_run_training_logs_and_saves_the_coef(tmp_path, make_tiny_model):
    """A short run: the start-up note, aux_loss and router load in the log history; the saved config keeps the
    recipe's coefficient and the base's output_router_logits (generation computes no router logits)."""
    cfg = _cfg(tmp_path, make_tiny_model("mixtral"), "--max_steps", "3", "--per_device_train_batch_size", "4",
               "--router_aux_loss_coef", "0.05", "--learning_rate", "1e-2")  # fmt: skip
    run_training(cfg)
    out = Path(cfg.training.output_dir)
    logs = [e for e in json.loads((out / "log_history.json").read_text()) if "loss" in e]
    assert len(logs) == 3 and all("aux_loss" in e and "router_load_max" in e for e in logs)
    saved = json.loads((out / "config.json").read_text())
    assert saved["router_aux_loss_coef"] == 0.05 and not saved.get("output_router_logits")
    assert any("router aux" in n for n in cfg.notes)


def test_a_base_config_with_router_logits_on(tmp_path, make_tiny_model):
    """A checkpoint whose config.json already says output_router_logits: true (transformers' models would then add
    coef × aux to every forward's loss, evaluation included): with output_router_logits: false the trained loss is
    the LM loss alone, and eval_loss is the LM loss either way."""
    import shutil

    model_dir = tmp_path / "mixtral-router-on"
    shutil.copytree(make_tiny_model("mixtral"), model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps({**config, "output_router_logits": True}))
    for setting in ("false", "true"):
        cfg = _cfg(tmp_path / setting, model_dir, "--per_device_train_batch_size", "4", "--learning_rate", "0",
                   "--output_router_logits", setting, "--eval_split_ratio", "0.25")  # fmt: skip
        bundle, data = prepare_tokenized_data(cfg)
        model = load_model(cfg.model, False)
        trainer = build_trainer(cfg, bundle, data, model)
        rec = Record(trainer)
        trainer.train()
        ((inputs, n_items, loss),) = rec.calls
        feed = {k: v for k, v in inputs.items() if k != "labels"}
        with torch.no_grad():
            out = model(**feed, output_router_logits=False)
            lm = F.cross_entropy(out.logits[:, :-1].flatten(0, 1), inputs["labels"][:, 1:].flatten(),
                                 ignore_index=-100, reduction="sum") / n_items  # fmt: skip
        aux_part = float(loss) - float(lm)
        if setting == "false":
            assert abs(aux_part) < 1e-6
        else:
            assert aux_part > 1e-4  # coef 0.001 × aux ≈ 2
        ev = trainer.evaluate()
        batch = trainer.data_collator([e.as_features() for e in data.eval])
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            labels = batch["labels"][:, 1:]
            expected = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels.flatten(), ignore_index=-100)
        assert ev["eval_loss"] == pytest.approx(float(expected), abs=1e-5)


def test_moe_with_activation_checkpointing(tmp_path, make_tiny_model):
    cfg = _cfg(tmp_path, make_tiny_model("qwen2_moe"), "--max_steps", "2", "--per_device_train_batch_size", "4",
               "--activation_checkpointing", "true")  # fmt: skip
    run_training(cfg)
    logs = json.loads((Path(cfg.training.output_dir) / "log_history.json").read_text())
    assert all(e["aux_loss"] > 0 for e in logs if "loss" in e)
