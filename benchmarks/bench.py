#!/usr/bin/env python3
"""`make bench`: sftforge vs the peer (TRL SFTTrainer, ../shared/bench/peer_trl.py, used as is) on the same work.

Same tiny model (built once with `sftforge init-model`), same real data, same hyperparameters (1 epoch, batch 8,
max_length 512, lr 1e-4, fp32, sdpa, assistant-only loss, seed 42, no gradient checkpointing, no saving). Four
configurations, run alternately sftforge / TRL / sftforge / TRL, BENCH_REPEATS times per dataset:

    sftforge padding   python -m sftforge train benchmarks/recipes/bench.yaml ... --packing false
    TRL padding        python ../shared/bench/peer_trl.py ... --packing none
    sftforge packing   python -m sftforge train benchmarks/recipes/bench.yaml ... --packing true
    TRL bfd            python ../shared/bench/peer_trl.py ... --packing bfd

plus, once per dataset: the raw limit (benchmarks/raw_limit.py) and a replay of TRL's data loader to count its
padding (benchmarks/trl_batches.py), and per repeat a cached-preprocessing run of sftforge when the cache exists.

Prints a table and writes benchmarks/RESULTS.md (BENCH_RESULTS) and the raw numbers as JSON (in BENCH_WORKDIR).

Environment (all optional):
  BENCH_REPEATS=3            A/B alternations per dataset (>= 3 for a result worth reporting)
  BENCH_DATASETS=alpaca,glaive
  BENCH_THREADS=1            OMP/MKL threads for every process, the same for both tools (1: stable on a shared
                             machine; use $(nproc) on a dedicated one)
  BENCH_RUN_TIMEOUT=1200     seconds before one run is killed (the benchmark then stops)
  BENCH_MAX_STEPS=-1         >0: smoke run (every run stops after that many steps; ratios are then meaningless)
  BENCH_RAW_BATCHES=0        batches timed per raw-limit measurement, one per repeat (0: the whole epoch, so it
                             sees the same machine load as the training runs around it)
  BENCH_WORKDIR=outputs/bench   model, run folders, logs, results.json
  BENCH_RESULTS=benchmarks/RESULTS.md
  BENCH_SHARED=../shared     where peer_trl.py and the fixtures live
  BENCH_RESUME=1             continue an interrupted benchmark: keep its src/ snapshot, reuse every run whose log
                             shows it finished (same settings required), run the rest
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PY = sys.executable
RECIPE = HERE / "recipes" / "bench.yaml"

SHARED = Path(os.environ.get("BENCH_SHARED", REPO.parent / "shared")).resolve()
PEER = SHARED / "bench" / "peer_trl.py"
DATA_DIR = SHARED / "fixtures" / "data"
DATASETS = {"alpaca": "alpaca_en_demo.json", "glaive": "glaive_toolcall_en_demo.json"}

# (tool, mode); run in this order inside every repeat: A B A B.
CONFIGS = [("sftforge", "padding"), ("trl", "padding"), ("sftforge", "packing"), ("trl", "bfd")]
LABEL = {
    ("sftforge", "padding"): "sftforge padding",
    ("sftforge", "packing"): "sftforge packing",
    ("trl", "padding"): "TRL padding",
    ("trl", "bfd"): "TRL bfd",
}

HYPER = {"per_device_train_batch_size": 8, "max_length": 512, "learning_rate": "1e-4", "seed": 42}
# "tiny Qwen2, 1.0M params, vocab 2000" (the model): 1,044,608 parameters with these sizes.
MODEL_ARGS = {
    "arch": "qwen2",
    "vocab_size": 2000,
    "hidden_size": 128,
    "num_layers": 4,
    "num_heads": 4,
    "num_kv_heads": 2,
    "intermediate_size": 384,
    "seed": 0,
}

# Issue targets ("Speed on the same work").
T_SPEEDUP_PAD, T_SPEEDUP_BFD, T_RAW, T_REAL, T_PREP_COLD, T_PREP_CACHED = 1.6, 3.0, 1.2, 0.97, 3.0, 20.0


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    return int(value) if value else default


REPEATS = env_int("BENCH_REPEATS", 3)
# One thread per process by default: on a shared machine, two OpenMP threads on two busy cores stall at every
# barrier (measured here: the same 8×512 step took 0.27 s to 1.9 s with 2 threads, 0.50-0.56 s with 1).
THREADS = env_int("BENCH_THREADS", 1)
RUN_TIMEOUT = env_int("BENCH_RUN_TIMEOUT", 1200)
MAX_STEPS = env_int("BENCH_MAX_STEPS", -1)
RAW_BATCHES = env_int("BENCH_RAW_BATCHES", 0)
WORKDIR = Path(os.environ.get("BENCH_WORKDIR", REPO / "outputs" / "bench")).resolve()
RESULTS = Path(os.environ.get("BENCH_RESULTS", HERE / "RESULTS.md")).resolve()
SELECTED = [d.strip() for d in os.environ.get("BENCH_DATASETS", "alpaca,glaive").split(",") if d.strip()]
SMOKE = MAX_STEPS > 0
RESUME = os.environ.get("BENCH_RESUME", "") not in ("", "0")
SNAPSHOT = WORKDIR / "snapshot" / "src"


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "RAYON_NUM_THREADS"):
        env[key] = str(THREADS)
    env["CUDA_VISIBLE_DEVICES"] = ""  # both tools on CPU (the peer forces use_cpu anyway)
    env["HF_HUB_OFFLINE"] = "1"
    env["HF_DATASETS_OFFLINE"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    # Every sftforge process imports the snapshot of src/ taken at the start (see snapshot_source).
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SNAPSHOT), os.environ.get("PYTHONPATH", "")) if p)
    # Any sftforge process not given a --cache_dir (the raw-limit run) caches here, not in ~/.cache.
    env["SFTFORGE_CACHE"] = str(WORKDIR / "cache" / "default")
    return env


def rel(path: Path | str) -> str:
    """Paths in printed command lines relative to the repo root, as `make bench` runs them."""
    p = Path(path)
    try:
        return os.path.relpath(p, REPO)
    except ValueError:
        return str(p)


def shell(cmd: list[str]) -> str:
    import shlex

    return " ".join(shlex.quote(rel(c) if c.startswith("/") else c) for c in cmd)


DONE = "\n--- done: rc 0, wall_s {wall:.2f}, load {load:.2f} ---\n"


def finished_log(log: Path) -> tuple[str, float | None, float | None] | None:
    """(stdout, wall, load) of a run whose log says it finished (BENCH_RESUME); None when it must run again."""
    import re

    if not log.is_file():
        return None
    text = log.read_text(encoding="utf-8", errors="replace")
    if "\n--- stdout ---\n" not in text:
        return None
    stdout = text.split("\n--- stdout ---\n", 1)[1]
    m = re.search(r"\n--- done: rc 0, wall_s ([\d.]+), load ([\d.]+|nan) ---\n$", stdout)
    if m:
        load = None if m.group(2) == "nan" else float(m.group(2))
        return stdout[: m.start()], float(m.group(1)), load
    return (
        stdout,
        None,
        None,
    )  # a log from before the trailer existed: finished, timing of the process unknown


def run(cmd: list[str], log: Path) -> tuple[str, float | None, float | None]:
    """Run a child, stdout captured (and logged with stderr); returns (stdout, wall seconds, 1-min load average at
    the start). Fails loudly. With BENCH_RESUME=1 a run whose log shows it finished is not run again."""
    if RESUME:
        done = finished_log(log)
        if done is not None:
            return done
    log.parent.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    with open(log, "w", encoding="utf-8") as err:
        err.write("$ " + shell(cmd) + "\n")
        err.flush()
        try:
            proc = subprocess.run(
                cmd,
                cwd=REPO,
                env=child_env(),
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                timeout=RUN_TIMEOUT,
            )
        except subprocess.TimeoutExpired:
            raise SystemExit(f"bench: run exceeded BENCH_RUN_TIMEOUT={RUN_TIMEOUT} s: {shell(cmd)}") from None
    wall = time.perf_counter() - t0
    with open(log, "a", encoding="utf-8") as f:
        f.write("\n--- stdout ---\n" + proc.stdout)
        if proc.returncode == 0:
            f.write(DONE.format(wall=wall, load=load))
    if proc.returncode != 0:
        tail = "".join(log.read_text(encoding="utf-8", errors="replace").splitlines(True)[-25:])
        raise SystemExit(f"bench: command failed (exit {proc.returncode}): {shell(cmd)}\n{tail}")
    return proc.stdout, wall, load


def rnd(v: float | None, nd: int = 2) -> float | None:
    return None if v is None else round(v, nd)


def last_json(stdout: str) -> dict[str, Any]:
    for line in reversed(stdout.splitlines()):
        line = line.strip()
        if line.startswith("{") and line.endswith("}"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    raise SystemExit("bench: no JSON line in the output:\n" + stdout[-2000:])


# ---------------------------------------------------------------------------------------------------------------
# Setup: model, cache support, row counts
# ---------------------------------------------------------------------------------------------------------------


def build_model() -> tuple[Path, list[str], str]:
    """The tiny model, built once per MODEL_ARGS (the tokenizer is trained on both fixture files)."""
    corpus = [str(DATA_DIR / f) for f in DATASETS.values()]
    key = json.dumps({**MODEL_ARGS, "corpus": sorted(DATASETS.values())}, sort_keys=True)
    path = WORKDIR / "model"
    cmd = [PY, "-m", "sftforge", "init-model", str(path), "--corpus", *corpus]
    for k, v in MODEL_ARGS.items():
        cmd += [f"--{k}", str(v)]
    stamp = path / ".bench_model_args.json"
    if stamp.is_file() and stamp.read_text() == key and (path / "model.safetensors").is_file():
        note = (path / ".bench_init_model.txt").read_text().strip()
        return path, cmd, note
    shutil.rmtree(path, ignore_errors=True)
    out, _, _ = run(cmd, WORKDIR / "logs" / "init_model.log")
    note = next((line for line in out.splitlines() if line.startswith("init-model:")), out.strip())
    (path / ".bench_init_model.txt").write_text(note)
    stamp.write_text(key)
    return path, cmd, note


def check_session() -> None:
    """Settings that change the numbers; BENCH_RESUME only continues a benchmark made with the same ones."""
    session = {"threads": THREADS, "max_steps": MAX_STEPS, "raw_batches": RAW_BATCHES, "model": MODEL_ARGS}
    path = WORKDIR / "session.json"
    if RESUME and path.is_file():
        before = json.loads(path.read_text(encoding="utf-8"))
        if before != session:
            raise SystemExit(
                f"bench: BENCH_RESUME: settings differ from the interrupted run ({before} vs {session})"
            )
    elif not RESUME:
        for sub in ("runs", "logs", "cache"):  # a fresh benchmark: nothing of an earlier one is reused
            shutil.rmtree(WORKDIR / sub, ignore_errors=True)
    WORKDIR.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(session), encoding="utf-8")


def snapshot_source() -> str:
    """Copy src/sftforge once, at the start, and run every sftforge process from that copy (PYTHONPATH comes before
    the editable install's path). Others may edit src/ while the benchmark runs: without this, runs of one benchmark
    would measure different code, and the preprocessing cache (keyed by the data code's source) would miss."""
    import hashlib

    last_error = ""
    resumed = RESUME and (SNAPSHOT / "sftforge").is_dir()
    for _ in range(1 if resumed else 5):
        if resumed:
            break
        shutil.rmtree(SNAPSHOT, ignore_errors=True)
        shutil.copytree(
            REPO / "src" / "sftforge", SNAPSHOT / "sftforge", ignore=shutil.ignore_patterns("__pycache__")
        )
        probe = subprocess.run(
            [PY, "-c", "import sftforge, sftforge.cli, sftforge.train.run; print(sftforge.__file__)"],
            cwd=REPO, env=child_env(), capture_output=True, text=True,
        )  # fmt: skip
        if probe.returncode == 0 and str(SNAPSHOT) in probe.stdout:
            break
        last_error = (probe.stderr or probe.stdout).strip().splitlines()[-1:] or ["?"]
        time.sleep(10)  # caught someone mid-edit: take it again
    else:
        raise SystemExit(f"bench: the snapshot of src/ does not import: {last_error[0]}")
    h = hashlib.sha256()
    for f in sorted((SNAPSHOT / "sftforge").rglob("*")):
        if f.is_file() and "__pycache__" not in f.parts:
            h.update(str(f.relative_to(SNAPSHOT)).encode() + b"\0" + f.read_bytes())
    sys.path.insert(0, str(SNAPSHOT))
    stamp = dt.datetime.now().astimezone().strftime("%H:%M:%S")
    taken = SNAPSHOT / "taken.txt"
    if resumed and taken.is_file():
        stamp = taken.read_text().strip()
    else:
        taken.write_text(stamp)
    return f"src/ snapshot taken {stamp}, content sha256 {h.hexdigest()[:12]}" + (
        " (resumed)" if resumed else ""
    )


def cache_support() -> tuple[list[str] | None, str]:
    """Overrides that turn the preprocessing cache on with a given dir (cache_dir appended later), or None."""
    from sftforge.config.schema import DataArguments

    fields = {f.name: f for f in dataclasses.fields(DataArguments)}
    if "cache_dir" not in fields:
        return None, (
            "sftforge has no `cache_dir` data key (preprocessing cache not merged yet): every sftforge run is cold; "
            "the cached measurement is skipped."
        )
    extra: list[str] = []
    note = "cache: `--cache_dir` set to a fresh temp dir per run (cold); cached = same dir again"
    pc = fields.get("preprocessing_cache")
    if pc is not None:
        default = pc.default
        choices = pc.metadata.get("choices")
        if isinstance(default, bool) or default is None:
            extra = ["--preprocessing_cache", "true"]
            note += "; `--preprocessing_cache true`"
        elif choices:
            on = next(
                (c for c in ("read_write", "readwrite", "on", "true", "auto", "enabled") if c in choices),
                None,
            )
            if on is not None:
                extra = ["--preprocessing_cache", on]
                note += f"; `--preprocessing_cache {on}`"
            else:
                note += f"; `preprocessing_cache` left at its default {default!r} (choices {choices})"
        else:
            note += f"; `preprocessing_cache` left at its default {default!r}"
    return extra, note


def count_rows(path: Path) -> int:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        return sum(1 for line in text.splitlines() if line.strip())
    data = json.loads(text)
    return len(data) if isinstance(data, list) else 1


# ---------------------------------------------------------------------------------------------------------------
# One run of each tool
# ---------------------------------------------------------------------------------------------------------------


def sftforge_cmd(model: Path, data: Path, out: Path, packing: bool, extra: list[str]) -> list[str]:
    cmd = [PY, "-m", "sftforge", "train", str(RECIPE), "--model_name_or_path", str(model)]
    cmd += ["--train_data_path", str(data), "--output_dir", str(out), "--packing", str(packing).lower()]
    cmd += ["--disable_tqdm", "true", "--report_to", "none", "--save_strategy", "no", "--logging_steps", "1"]
    cmd += ["--num_train_epochs", "1"]
    for k, v in HYPER.items():
        cmd += [f"--{k}", str(v)]
    if SMOKE:
        cmd += ["--max_steps", str(MAX_STEPS)]
    return cmd + extra


def trl_cmd(model: Path, data: Path, packing: str) -> list[str]:
    cmd = [PY, str(PEER), "--model", str(model), "--data", str(data), "--packing", packing]
    for k, v in HYPER.items():
        cmd += [f"--{k}", str(v)]
    if SMOKE:
        cmd += ["--max_steps", str(MAX_STEPS)]
    return cmd


def parse_summary(stdout: str) -> dict[str, Any]:
    """Numbers from sftforge's start-up summary that metrics.json does not carry."""
    import re

    info: dict[str, Any] = {}
    m = re.search(r"data\s+(\d+) rows read, (\d+) kept", stdout)
    if m:
        info["rows_read"], info["rows_kept"] = int(m.group(1)), int(m.group(2))
    m = re.search(r"tokens\s+(\d+) total, (\d+) trained", stdout)
    if m:
        info["dataset_tokens"], info["trained_tokens"] = int(m.group(1)), int(m.group(2))
    m = re.search(r"packing\s+(\d+) rows of .*?\(([\d.]+)% full\)", stdout)
    if m:
        info["packed_rows"], info["packed_fill"] = int(m.group(1)), float(m.group(2)) / 100
    m = re.search(r"(\d+) optimizer steps", stdout)
    if m:
        info["planned_steps"] = int(m.group(1))
    return info


def run_sftforge(
    ds: str, mode: str, rep: int, model: Path, data: Path, cache: list[str] | None
) -> dict[str, Any]:
    name = f"{ds}-sftforge-{mode}-r{rep}"
    out = WORKDIR / "runs" / name
    log = WORKDIR / "logs" / f"{name}.log"
    extra: list[str] = []
    cache_dir = WORKDIR / "cache" / name
    if cache is not None:
        extra = [*cache, "--cache_dir", str(cache_dir)]
    cmd = sftforge_cmd(model, data, out, mode == "packing", extra)
    if not (RESUME and finished_log(log) and (out / "metrics.json").is_file()):
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(cache_dir, ignore_errors=True)  # cold: an empty cache dir
        log.unlink(missing_ok=True)
    stdout, wall, load = run(cmd, log)
    m = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    history = json.loads((out / "log_history.json").read_text(encoding="utf-8"))
    info = parse_summary(stdout)
    steps = sum(1 for e in history if "loss" in e)
    rows = info.get("rows_read") or count_rows(data)
    r: dict[str, Any] = {
        "tool": "sftforge",
        "mode": mode,
        "dataset": ds,
        "rep": rep,
        "cmd": cmd,
        "train_s": m["train_s"],
        "train_runtime": m.get("train_runtime"),
        "prep_s": m["prep_s"],
        "wall_s": rnd(wall),
        "load_avg": rnd(load),
        "steps": steps,
        "rows": rows,
        "seen_tokens": m["seen_tokens"],
        "dataset_tokens": info.get("dataset_tokens"),
        "tokens_per_s": m["tokens_per_s"],
        "real_token_fraction": m["real_token_fraction"],
        "fill": (
            round(m["seen_tokens"] / (steps * HYPER["per_device_train_batch_size"] * HYPER["max_length"]), 4)
            if mode == "packing" and steps
            else None
        ),
        "packed_fill": info.get("packed_fill"),
        "prep_ex_s": round(rows / m["prep_s"], 1) if m["prep_s"] else None,
        "peak_rss_mb": m["peak_rss_mb"],
        "train_loss": m.get("train_loss"),
        "final_loss": m.get("train_loss_last"),
        "first_loss": m.get("train_loss_first"),
        "trained_tokens": m.get("trained_tokens_per_epoch"),
        "cache_dir": str(cache_dir) if cache is not None else None,
    }
    return r


def run_sftforge_cached(ds: str, rep: int, model: Path, data: Path, cache: list[str], cache_dir: str) -> dict:
    """Same recipe again with the cache dir the cold run filled; one step is enough to read prep_s."""
    name = f"{ds}-sftforge-cached-r{rep}"
    out = WORKDIR / "runs" / name
    log = WORKDIR / "logs" / f"{name}.log"
    cmd = sftforge_cmd(model, data, out, True, [*cache, "--cache_dir", cache_dir])
    if "--max_steps" not in cmd:
        cmd += ["--max_steps", "1"]
    if not (RESUME and finished_log(log) and (out / "metrics.json").is_file()):
        shutil.rmtree(out, ignore_errors=True)
        log.unlink(missing_ok=True)
    stdout, wall, _ = run(cmd, log)
    m = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    rows = parse_summary(stdout).get("rows_read") or count_rows(data)
    return {
        "tool": "sftforge",
        "mode": "cached",
        "dataset": ds,
        "rep": rep,
        "cmd": cmd,
        "prep_s": m["prep_s"],
        "prep_ex_s": round(rows / m["prep_s"], 1) if m["prep_s"] else None,
        "wall_s": rnd(wall),
        "rows": rows,
        "cache_line": next(
            (ln.strip() for ln in stdout.splitlines() if ln.strip().startswith("cache ")), None
        ),
    }


def run_trl(ds: str, mode: str, rep: int, model: Path, data: Path) -> dict[str, Any]:
    name = f"{ds}-trl-{mode}-r{rep}"
    cmd = trl_cmd(model, data, "bfd" if mode == "bfd" else "none")
    stdout, wall, load = run(cmd, WORKDIR / "logs" / f"{name}.log")
    j = last_json(stdout)
    rows = count_rows(data)
    return {
        "tool": "trl",
        "mode": mode,
        "dataset": ds,
        "rep": rep,
        "cmd": cmd,
        "train_s": j["train_s"],
        "prep_s": j["prep_s"],
        "load_s": j.get("load_s"),
        "wall_s": rnd(wall),
        "load_avg": rnd(load),
        "steps": j["steps"],
        "rows": rows,
        "seen_tokens": j["seen_tokens"],
        "dataset_tokens": j["dataset_tokens"],
        "tokens_per_s": j["tokens_per_s"],
        "prep_ex_s": round(rows / j["prep_s"], 1) if j["prep_s"] else None,
        "peak_rss_mb": j["peak_rss_mb"],
        "train_loss": j.get("train_loss"),
        "final_loss": j.get("final_loss"),
        "trl_version": j.get("trl_version"),
    }


def trl_replay(ds: str, model: Path, data: Path, packing: str) -> dict[str, Any]:
    cmd = [PY, str(HERE / "trl_batches.py"), "--peer", str(PEER), "--model", str(model), "--data", str(data)]
    cmd += ["--packing", packing]
    out, wall, _ = run(cmd, WORKDIR / "logs" / f"{ds}-trl-replay-{packing}.log")
    return {**last_json(out), "cmd": cmd, "wall_s": rnd(wall)}


def raw_limit(ds: str, model: Path, data: Path, rep: int) -> dict[str, Any]:
    cmd = [PY, str(HERE / "raw_limit.py"), str(RECIPE), "--batches", str(RAW_BATCHES)]
    cmd += ["--model_name_or_path", str(model), "--train_data_path", str(data)]
    for k, v in HYPER.items():
        cmd += [f"--{k}", str(v)]
    out, wall, load = run(cmd, WORKDIR / "logs" / f"{ds}-raw-limit-r{rep}.log")
    return {**last_json(out), "cmd": cmd, "load_avg": rnd(load), "wall_s": rnd(wall)}


# ---------------------------------------------------------------------------------------------------------------
# Summaries
# ---------------------------------------------------------------------------------------------------------------


def med(values: list[Any]) -> float | None:
    vals = [v for v in values if isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v))]
    return statistics.median(vals) if vals else None


def fmt(v: Any, nd: int = 2) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if abs(v) >= 100:
            return f"{v:,.0f}"
        return f"{v:.{nd}f}"
    return str(v)


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def raw_median(items: list[dict]) -> dict[str, Any] | None:
    """Medians of the per-repeat raw-limit measurements (sizes are the same in every one)."""
    if not items:
        return None
    timed = [
        "fwd_bwd_s_per_batch",
        "step_s_per_batch",
        "fwd_bwd_s_per_epoch",
        "raw_limit_s",
        "raw_tokens_per_s",
    ]
    return {**items[0], **{k: med([i[k] for i in items]) for k in timed}, "n": len(items)}


def summarize(runs: list[dict], replays: dict, raws: dict) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for ds in SELECTED:
        per: dict[str, dict[str, Any]] = {}
        for tool, mode in [*CONFIGS, ("sftforge", "cached")]:
            rs = [r for r in runs if r["dataset"] == ds and r["tool"] == tool and r["mode"] == mode]
            if not rs:
                continue
            keys = [
                "train_s",
                "tokens_per_s",
                "real_token_fraction",
                "fill",
                "prep_s",
                "prep_ex_s",
                "peak_rss_mb",
                "wall_s",
                "steps",
                "seen_tokens",
                "dataset_tokens",
                "train_loss",
                "final_loss",
            ]
            per[LABEL.get((tool, mode), f"{tool} {mode}")] = {k: med([r.get(k) for r in rs]) for k in keys}
        # TRL's real-token fraction comes from the replay of its data loader.
        for mode, packing in (("padding", "none"), ("bfd", "bfd")):
            rp = replays.get((ds, packing))
            label = LABEL[("trl", mode)]
            if rp and label in per:
                per[label]["real_token_fraction"] = rp["real_token_fraction"]
                per[label]["fill"] = rp["fill_of_batch_capacity"]
        out[ds] = {"medians": per, "raw": raw_median(raws.get(ds) or [])}
    return out


def targets(
    summary: dict[str, Any], cache_note: str | None, cache_on: bool
) -> list[tuple[str, str, str, str]]:
    """(target, dataset, measured, PASS/FAIL/n/a)."""
    rows = []

    def verdict(ok: bool | None) -> str:
        return "n/a" if ok is None else ("PASS" if ok else "FAIL")

    for ds, s in summary.items():
        m = s["medians"]
        sp, tp, sfp, tb = (
            m.get(LABEL[c]) or {}
            for c in [("sftforge", "packing"), ("trl", "padding"), ("sftforge", "padding"), ("trl", "bfd")]
        )
        r1 = ratio(tp.get("train_s"), sp.get("train_s"))
        rows.append(
            (
                f"epoch wall time: TRL padding / sftforge packing ≥ {T_SPEEDUP_PAD}×",
                ds,
                fmt(r1) + "×",
                verdict(None if r1 is None else r1 >= T_SPEEDUP_PAD),
            )
        )
        r2 = ratio(tb.get("train_s"), sp.get("train_s"))
        rows.append(
            (
                f"epoch wall time: TRL bfd / sftforge packing ≥ {T_SPEEDUP_BFD}×",
                ds,
                fmt(r2) + "×",
                verdict(None if r2 is None else r2 >= T_SPEEDUP_BFD),
            )
        )
        raw = (s.get("raw") or {}).get("raw_limit_s")
        r3 = ratio(sp.get("train_s"), raw)
        rows.append(
            (
                f"sftforge packing epoch / raw limit ≤ {T_RAW}×",
                ds,
                fmt(r3) + "×",
                verdict(None if r3 is None else r3 <= T_RAW),
            )
        )
        f = sp.get("real_token_fraction")
        rows.append(
            (
                f"real (non-pad) tokens per batch, packing ≥ {T_REAL:.0%}",
                ds,
                fmt(f, 4),
                verdict(None if f is None else f >= T_REAL),
            )
        )
        fill = sp.get("fill")
        rows.append(
            (
                f"  stricter reading: batch fill, real / (8×512) ≥ {T_REAL:.0%}",
                ds,
                fmt(fill, 4),
                verdict(None if fill is None else fill >= T_REAL),
            )
        )
        trl_prep = med([tp.get("prep_ex_s"), tb.get("prep_ex_s")])
        sf_cold = med([sp.get("prep_ex_s"), sfp.get("prep_ex_s")])
        r5 = ratio(sf_cold, trl_prep)
        rows.append(
            (
                f"cold preprocessing ≥ {T_PREP_COLD}× TRL's examples/s",
                ds,
                fmt(r5) + "×",
                verdict(None if r5 is None else r5 >= T_PREP_COLD),
            )
        )
        cached = (m.get("sftforge cached") or {}).get("prep_ex_s")
        r6 = ratio(cached, trl_prep)
        rows.append(
            (
                f"cached preprocessing ≥ {T_PREP_CACHED}× TRL's examples/s",
                ds,
                (fmt(r6) + "×") if cache_on else "not measured (no cache key)",
                verdict(None if r6 is None else r6 >= T_PREP_CACHED),
            )
        )
        for a, b, what in ((sfp, tp, "padding vs TRL padding"), (sp, tb, "packing vs TRL bfd")):
            ra, rb = a.get("peak_rss_mb"), b.get("peak_rss_mb")
            rows.append(
                (
                    f"peak RSS ≤ TRL's ({what})",
                    ds,
                    f"{fmt(ra, 0)} vs {fmt(rb, 0)} MB",
                    verdict(None if ra is None or rb is None else ra <= rb),
                )
            )
    return rows


# ---------------------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------------------


def table(header: list[str], rows: list[list[Any]]) -> list[str]:
    cells = [[fmt(c) if not isinstance(c, str) else c for c in r] for r in rows]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in cells]
    return lines


def versions() -> dict[str, str]:
    import importlib.metadata as md

    v = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "trl", "datasets", "accelerate", "tokenizers", "sftforge"):
        try:
            v[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            v[pkg] = "missing"
    return v


def git_rev() -> str:
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "src"], cwd=REPO, capture_output=True, text=True
        )
        return rev.stdout.strip() + (" (src/ has uncommitted changes)" if dirty.stdout.strip() else "")
    except OSError:
        return "unknown"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def report(ctx: dict[str, Any]) -> str:
    runs, summary = ctx["runs"], ctx["summary"]
    v = ctx["versions"]
    L: list[str] = []
    L.append("# sftforge vs TRL: speed on the same work")
    L.append("")
    if SMOKE:
        L.append(
            f"**SMOKE RUN (BENCH_MAX_STEPS={MAX_STEPS}): every run stopped early; the ratios below are not "
            "epoch numbers and the targets are not judged on them.**"
        )
        L.append("")
    session = "completed by a resumed session (BENCH_RESUME=1) of" if RESUME else "run of"
    L.append(
        f"Generated by `make bench` (benchmarks/bench.py), {session} {ctx['started']}, "
        f"{ctx['elapsed_min']:.1f} min."
    )
    L.append("")
    L.append("## Machine and software")
    L.append("")
    L.append(f"- CPU: {cpu_name()}, nproc {os.cpu_count()}; threads per process (OMP_NUM_THREADS): {THREADS}")
    L.append(
        f"- load average (1 min) at start {ctx['load_start']:.2f}, at end {ctx['load_end']:.2f}; per-run "
        "values in the raw table (the machine is shared: other work competes for the same cores)"
    )
    L.append("- " + ", ".join(f"{k} {val}" for k, val in v.items()))
    L.append(f"- sftforge commit {ctx['git']}")
    L.append(f"- model: `{ctx['model_note']}`")
    L.append(
        f"- repeats: {REPEATS} per dataset, order per repeat: "
        + " → ".join(LABEL[c] for c in CONFIGS)
        + " (A B A B) → raw limit"
    )
    L.append(f"- {ctx['cache_note']}")
    walls = [r.get("wall_s") for r in runs] + [x.get("wall_s") for v in ctx["raws"].values() for x in v]
    walls += [x.get("wall_s") for x in ctx["replays"].values()]
    known = [w for w in walls if isinstance(w, (int, float))]
    L.append(
        f"- time: the {len(known)} child processes ran {sum(known) / 60:.1f} min in all"
        + (f" ({len(walls) - len(known)} more with no recorded time)" if len(known) < len(walls) else "")
    )
    L.append("")
    L.append("## Command lines")
    L.append("")
    L.append(
        "Run from the repository root; `OUT` is a fresh folder per run (`outputs/bench/runs/…`), "
        "`CACHE` an empty cache dir per cold run "
        "(`outputs/bench/cache/<run>`)."
    )
    L.append("")
    L.append("```")
    L.append(shell(ctx["model_cmd"]))
    shown = set()
    for r in runs:
        key = (r["tool"], r["mode"])
        if key in shown or r["dataset"] != SELECTED[0]:
            continue
        shown.add(key)
        cmd = [c for c in r["cmd"]]
        if r["tool"] == "sftforge":
            i = cmd.index("--output_dir")
            cmd[i + 1] = "OUT"
            if "--cache_dir" in cmd:
                cmd[cmd.index("--cache_dir") + 1] = "CACHE"
        L.append(f"# {LABEL.get(key, 'sftforge cached preprocessing (same CACHE as the cold packing run)')}")
        L.append(shell(cmd))
    for ds in SELECTED[:1]:
        for kind in ("raw", "replay_none", "replay_bfd"):
            item = (
                (ctx["raws"].get(ds) or [None])[0]
                if kind == "raw"
                else ctx["replays"].get((ds, kind.split("_")[1]))
            )
            if item:
                L.append(
                    f"# {'raw limit' if kind == 'raw' else 'TRL batch replay (' + kind.split('_')[1] + ')'}"
                )
                L.append(shell(item["cmd"]))
    L.append("```")
    L.append("")
    L.append(
        f"Thread settings for every process: `OMP_NUM_THREADS={THREADS} MKL_NUM_THREADS={THREADS}`. "
        f"Other datasets: replace `{DATASETS[SELECTED[0]]}`."
    )
    L.append("")
    L.append('## Targets (issue "Speed on the same work")')
    L.append("")
    L += table(["target", "dataset", "measured (medians)", "result"], [list(t) for t in ctx["targets"]])
    L.append("")
    for ds, s in summary.items():
        L.append(f"## {ds} ({DATASETS[ds]}) — medians of {REPEATS}")
        L.append("")
        m = s["medians"]
        hdr = [
            "config",
            "epoch train_s",
            "steps",
            "real tok/s",
            "real-token fraction",
            "batch fill",
            "prep_s",
            "prep ex/s",
            "peak RSS MB",
            "process wall s",
            "tokens fed",
            "mean loss",
            "last loss",
        ]
        rows = []
        for label, x in m.items():
            rows.append(
                [
                    label,
                    x["train_s"],
                    x["steps"],
                    x["tokens_per_s"],
                    x["real_token_fraction"],
                    x["fill"],
                    x["prep_s"],
                    x["prep_ex_s"],
                    x["peak_rss_mb"],
                    x["wall_s"],
                    x["seen_tokens"],
                    x["train_loss"],
                    x["final_loss"],
                ]
            )
        raw = s.get("raw")
        if raw:
            rows.append(
                [
                    "raw limit (fwd+bwd+AdamW, packed 8×512)",
                    raw["raw_limit_s"],
                    round(raw["batches_per_epoch"], 1),
                    raw["raw_tokens_per_s"],
                    1.0,
                    1.0,
                    None,
                    None,
                    None,
                    None,
                    raw["dataset_tokens"],
                    None,
                    None,
                ]
            )
        L += table(hdr, rows)
        L.append("")
        sp, tp = m.get("sftforge packing", {}), m.get("TRL padding", {})
        tb, sfp = m.get("TRL bfd", {}), m.get("sftforge padding", {})
        L.append("Ratios (medians):")
        L.append("")
        items = [
            ("epoch time TRL padding / sftforge packing", ratio(tp.get("train_s"), sp.get("train_s"))),
            ("epoch time TRL bfd / sftforge packing", ratio(tb.get("train_s"), sp.get("train_s"))),
            ("epoch time TRL padding / sftforge padding", ratio(tp.get("train_s"), sfp.get("train_s"))),
            (
                "real tok/s sftforge packing / TRL padding",
                ratio(sp.get("tokens_per_s"), tp.get("tokens_per_s")),
            ),
            ("real tok/s sftforge packing / TRL bfd", ratio(sp.get("tokens_per_s"), tb.get("tokens_per_s"))),
            ("sftforge packing epoch / raw limit", ratio(sp.get("train_s"), (raw or {}).get("raw_limit_s"))),
            ("TRL padding epoch / raw limit", ratio(tp.get("train_s"), (raw or {}).get("raw_limit_s"))),
            ("TRL bfd epoch / raw limit", ratio(tb.get("train_s"), (raw or {}).get("raw_limit_s"))),
            (
                "prep ex/s sftforge cold / TRL",
                ratio(
                    med([sp.get("prep_ex_s"), sfp.get("prep_ex_s")]),
                    med([tp.get("prep_ex_s"), tb.get("prep_ex_s")]),
                ),
            ),
            ("peak RSS sftforge packing / TRL bfd", ratio(sp.get("peak_rss_mb"), tb.get("peak_rss_mb"))),
            ("peak RSS sftforge padding / TRL padding", ratio(sfp.get("peak_rss_mb"), tp.get("peak_rss_mb"))),
        ]
        L += [f"- {k}: {fmt(val)}×" for k, val in items if val is not None]
        if raw:
            L.append(
                f"- raw limit: {fmt(raw['step_s_per_batch'], 3)} s per full 8×512 batch (median of "
                f"{raw['timed_batches']} timed batches per repeat, median of {raw['n']} repeats: "
                + ", ".join(f"{fmt(x['raw_limit_s'], 1)} s" for x in ctx["raws"][ds])
                + f"; fwd+bwd alone {fmt(raw['fwd_bwd_s_per_batch'], 3)} s) × "
                f"{raw['batches_per_epoch']} batches = {fmt(raw['raw_limit_s'], 1)} s per epoch of sftforge's "
                f"{raw['dataset_tokens']:,} tokens ({fmt(raw['fwd_bwd_s_per_epoch'], 1)} s without the optimizer step)"
            )
            per_rep = []
            for x in ctx["raws"][ds]:
                sp_r = next(
                    (
                        r
                        for r in ctx["runs"]
                        if r["dataset"] == ds and r["mode"] == "packing" and r["rep"] == x["rep"]
                    ),
                    None,
                )
                if sp_r:
                    per_rep.append(f"r{x['rep']} {sp_r['train_s'] / x['raw_limit_s']:.2f}×")
            if per_rep:
                L.append(
                    "- sftforge packing / raw limit per repeat (each raw run right after that repeat's "
                    "training runs): " + ", ".join(per_rep)
                )
        for packing in ("none", "bfd"):
            rp = ctx["replays"].get((ds, packing))
            if rp:
                seen = tp.get("seen_tokens") if packing == "none" else tb.get("seen_tokens")
                check = (
                    "matches" if seen == rp["real_tokens"] else f"DIFFERS from the peer's seen_tokens {seen}"
                )
                L.append(
                    f"- TRL {packing} replay: {rp['batches']} batches, {rp['real_tokens']:,} real of "
                    f"{rp['total_tokens']:,} tokens in the batch tensors → fraction {rp['real_token_fraction']} "
                    f"(worst batch {rp['min_batch_fraction']}), fill of 8×512 {rp['fill_of_batch_capacity']}; "
                    f"real tokens {check}"
                )
        L.append("")
    L.append("## Per-run raw numbers")
    L.append("")
    hdr = [
        "dataset",
        "config",
        "rep",
        "load avg",
        "train_s",
        "steps",
        "real tok/s",
        "real frac",
        "prep_s",
        "prep ex/s",
        "peak RSS MB",
        "wall s",
        "tokens fed",
        "dataset tokens",
        "mean loss",
        "last loss",
    ]
    rows = []
    for r in runs:
        rows.append(
            [
                r["dataset"],
                LABEL.get((r["tool"], r["mode"]), "sftforge cached"),
                r["rep"],
                r.get("load_avg"),
                r.get("train_s"),
                r.get("steps"),
                r.get("tokens_per_s"),
                r.get("real_token_fraction"),
                r.get("prep_s"),
                r.get("prep_ex_s"),
                r.get("peak_rss_mb"),
                r.get("wall_s"),
                r.get("seen_tokens"),
                r.get("dataset_tokens"),
                r.get("train_loss"),
                r.get("final_loss"),
            ]
        )
    for ds, items in ctx["raws"].items():
        for x in items:
            rows.append(
                [
                    ds,
                    "raw limit",
                    x["rep"],
                    x.get("load_avg"),
                    x["raw_limit_s"],
                    round(x["batches_per_epoch"], 1),
                    x["raw_tokens_per_s"],
                    1.0,
                    None,
                    None,
                    None,
                    None,
                    x["dataset_tokens"],
                    x["dataset_tokens"],
                    None,
                    None,
                ]
            )
    L += table(hdr, rows)
    L.append("")
    L.append("## How each number is measured")
    L.append("")
    L += [
        "- **epoch wall time** = `train_s`: seconds inside `trainer.train()` (both tools time the same call; "
        "model loading, tokenization and saving are outside).",
        "- **real tokens/s** = non-pad tokens fed to the model / `train_s` (sftforge: counted per trained batch; "
        "TRL: `num_tokens` of its log = attention-mask sum, or all tokens when padding-free).",
        "- **real-token fraction** = non-pad / all tokens of the batch tensors. sftforge: `real_token_fraction` "
        "of metrics.json. TRL reports no padded total, so `benchmarks/trl_batches.py` rebuilds the peer's "
        "SFTTrainer (the peer's own conversion and template, same SFTConfig values), iterates "
        "`get_train_dataloader()` once (seed 42 → the same epoch-0 order as the peer's run) and counts; the "
        "replay's real tokens are checked against the peer's `seen_tokens`. Padding-free batches (sftforge "
        "packing, TRL bfd) contain no pads, so this is 1.0 by construction; **batch fill** = real tokens / "
        "(steps × 8 × 512) shows how full the packed rows are.",
        "- **preprocessing examples/s** = rows in the data file / `prep_s`. sftforge `prep_s`: read, convert, "
        "render, tokenize, verify the masks (or load all that from the cache), then pack; the tokenizer load "
        "is not in it (sftforge before 2026-11-23 19:40 counted it: ~0.03 s). TRL `prep_s`: `SFTTrainer(...)` construction (tokenization, truncation, packing); its "
        "tokenizer load and row conversion are in `load_s`, not here. Cold = fresh cache dir; cached = the "
        "same cache dir again (a 1-step run, reading `prep_s`).",
        "- **peak RSS** = `ru_maxrss` of the training process, as each tool reports it.",
        "- **raw limit** = `benchmarks/raw_limit.py`: sftforge's tokenized examples concatenated and cut into "
        "fully packed 8×512 batches, plain causal sdpa, `model(input_ids, labels)` + `backward()` + "
        "`AdamW.step()` + `zero_grad()`; no data loader, no Trainer, no scheduler, no logging. Median seconds "
        "per batch × batches in the epoch (the partial last batch counted by its token share).",
        "- **loss**: mean training loss over the epoch (`train_loss`) and the last logged step; same model, same "
        "lr, so they must be in the same range (both start at ln(vocab) ≈ 7.6).",
        "- medians over the repeats; ratios are ratios of medians.",
    ]
    L.append("")
    if RESUME:
        ctx["notes"].append(
            "resumed with BENCH_RESUME=1 after an interruption: runs whose logs showed them finished were reused, "
            "the rest ran in the resumed session (same src/ snapshot, same settings); the date and duration at the "
            "top are the resumed session's."
        )
    if ctx["notes"]:
        L.append("## Notes and checks")
        L.append("")
        L += [f"- {n}" for n in ctx["notes"]]
        L.append("")
    return "\n".join(L) + "\n"


def checks(runs: list[dict], summary: dict, replays: dict) -> list[str]:
    """Consistency checks on both tools' numbers, written into the report."""
    notes = []
    for r in runs:
        if r["mode"] == "cached" and r.get("cache_line") and " hit" not in r["cache_line"]:
            notes.append(f"{r['dataset']} cached r{r['rep']}: NOT a cache hit ({r['cache_line']})")
    for ds in SELECTED:
        sf = [r for r in runs if r["dataset"] == ds and r["tool"] == "sftforge" and r["mode"] != "cached"]
        tr = [r for r in runs if r["dataset"] == ds and r["tool"] == "trl"]
        sf_tok = {r.get("dataset_tokens") for r in sf}
        tr_tok = {r.get("dataset_tokens") for r in tr}
        if sf and tr:
            sf_s = ", ".join(fmt(t) for t in sorted(x for x in sf_tok if x))
            tr_s = " / ".join(
                f"{fmt(r['dataset_tokens'])} ({r['mode']})" for r in tr if r["rep"] == 1
            ) or fmt(tr_tok)
            if sf_tok == tr_tok:
                notes.append(f"{ds}: same tokens per epoch in both tools ({sf_s}): the same work.")
            else:
                notes.append(
                    f"{ds}: tokens per epoch differ — sftforge {sf_s}, TRL {tr_s}. Epoch times compare the same "
                    "rows, not the same token count; real tok/s compares per-token speed."
                )
        if not SMOKE:
            for r in sf:
                if r.get("dataset_tokens") and r["seen_tokens"] != r["dataset_tokens"]:
                    notes.append(
                        f"{ds} {r['mode']} r{r['rep']}: sftforge seen_tokens {r['seen_tokens']:,} ≠ "
                        f"dataset tokens {r['dataset_tokens']:,} for one epoch"
                    )
        for r in sf:
            if (
                r["mode"] == "packing"
                and r.get("fill")
                and r.get("packed_fill")
                and abs(r["fill"] - r["packed_fill"]) > 0.01
                and not SMOKE
            ):
                notes.append(
                    f"{ds} packing r{r['rep']}: fill from steps {r['fill']} vs summary "
                    f"{r['packed_fill']} (partial last batch)"
                )
        pairs = []
        for sf_mode, tr_mode in (("padding", "padding"), ("packing", "bfd")):
            a = med([r.get("train_loss") for r in sf if r["mode"] == sf_mode])
            b = med([r.get("train_loss") for r in tr if r["mode"] == tr_mode])
            if a and b:
                d = abs(a - b) / b
                verdict = "same range" if d < 0.15 else "NOT the same range"
                pairs.append(
                    f"sftforge {sf_mode} {a:.3f} vs TRL {tr_mode} {b:.3f} ({d:.1%} apart: {verdict})"
                )
        if pairs:
            notes.append(
                f"{ds}: mean train loss over the epoch — " + "; ".join(pairs) + ". Packed runs take fewer, "
                "fuller steps at the same lr, so their epoch-mean loss is higher in both tools."
            )
        for (d, packing), rp in replays.items():
            if d != ds:
                continue
            mode = "padding" if packing == "none" else "bfd"
            seen = {r["seen_tokens"] for r in tr if r["mode"] == mode}
            if not SMOKE and seen and seen != {rp["real_tokens"]}:
                notes.append(
                    f"{ds}: TRL {mode} replay counted {rp['real_tokens']:,} real tokens, the runs fed "
                    f"{sorted(seen)}: the replay does not match; its fraction is an estimate"
                )
    return notes


def print_table(summary: dict, tgt: list) -> None:
    print()
    for ds, s in summary.items():
        print(f"== {ds}: medians of {REPEATS} ==")
        hdr = (
            f"{'config':<18}{'train_s':>9}{'tok/s':>9}{'real':>7}{'fill':>7}{'prep ex/s':>11}{'RSS MB':>8}"
            f"{'loss':>7}"
        )
        print(hdr)
        for label, x in s["medians"].items():
            print(
                f"{label:<18}{fmt(x['train_s'], 1):>9}{fmt(x['tokens_per_s'], 0):>9}"
                f"{fmt(x['real_token_fraction'], 3):>7}{fmt(x['fill'], 3):>7}{fmt(x['prep_ex_s'], 0):>11}"
                f"{fmt(x['peak_rss_mb'], 0):>8}{fmt(x['train_loss'], 3):>7}"
            )
        raw = s.get("raw")
        if raw:
            print(f"{'raw limit':<18}{fmt(raw['raw_limit_s'], 1):>9}{fmt(raw['raw_tokens_per_s'], 0):>9}")
        print()
    print("== targets ==")
    for t in tgt:
        print(f"{t[3]:<5} {t[1]:<7} {t[2]:<28} {t[0]}")


def main() -> int:
    if not PEER.is_file():
        raise SystemExit(f"bench: the peer script {PEER} is missing (set BENCH_SHARED)")
    unknown = [d for d in SELECTED if d not in DATASETS]
    if unknown or not SELECTED:
        raise SystemExit(f"bench: BENCH_DATASETS: unknown {unknown}; choose from {', '.join(DATASETS)}")
    if REPEATS < 1:
        raise SystemExit("bench: BENCH_REPEATS must be ≥ 1")
    try:
        import trl  # noqa: F401
    except ImportError:
        raise SystemExit('bench: trl is not installed: pip install -e ".[bench]"') from None
    t_start = time.perf_counter()
    started = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    load_start = os.getloadavg()[0]
    print(
        f"bench: {REPEATS} repeats × {len(SELECTED)} datasets × {len(CONFIGS)} configs, {THREADS} threads, "
        f"workdir {rel(WORKDIR)}" + (f", SMOKE max_steps={MAX_STEPS}" if SMOKE else ""),
        flush=True,
    )
    check_session()
    snapshot_note = snapshot_source()
    print(f"bench: {snapshot_note} (every sftforge process runs this copy)", flush=True)
    model, model_cmd, model_note = build_model()
    print(f"bench: {model_note}", flush=True)
    cache, cache_note = cache_support()
    print(f"bench: {cache_note}", flush=True)

    runs: list[dict] = []
    replays: dict[tuple[str, str], dict] = {}
    raws: dict[str, list[dict]] = {}
    total = len(SELECTED) * REPEATS * len(CONFIGS)
    done = 0
    for ds in SELECTED:
        data = DATA_DIR / DATASETS[ds]
        for packing in ("none", "bfd"):
            t0 = time.perf_counter()
            replays[(ds, packing)] = trl_replay(ds, model, data, packing)
            rp = replays[(ds, packing)]
            print(
                f"bench: {ds} TRL {packing} batches replayed: real-token fraction {rp['real_token_fraction']}, "
                f"fill {rp['fill_of_batch_capacity']} ({time.perf_counter() - t0:.0f} s)",
                flush=True,
            )
        for rep in range(1, REPEATS + 1):
            for tool, mode in CONFIGS:
                done += 1
                if tool == "sftforge":
                    r = run_sftforge(ds, mode, rep, model, data, cache)
                else:
                    r = run_trl(ds, mode, rep, model, data)
                runs.append(r)
                print(
                    f"bench: [{done}/{total}] {ds} {LABEL[(tool, mode)]:<17} r{rep}: train {r['train_s']:.1f} s, "
                    f"{r['tokens_per_s']:.0f} tok/s, prep {r['prep_s']:.2f} s, RSS {r['peak_rss_mb']:.0f} MB, "
                    f"loss {fmt(r['train_loss'], 3)} (wall {fmt(r['wall_s'], 0)} s, load {fmt(r['load_avg'])})",
                    flush=True,
                )
                if tool == "sftforge" and mode == "packing" and cache is not None:
                    c = run_sftforge_cached(ds, rep, model, data, cache, r["cache_dir"])
                    runs.append(c)
                    print(
                        f"bench:        {ds} sftforge cached prep r{rep}: {c['prep_s']:.3f} s "
                        f"({c['prep_ex_s']:.0f} ex/s)",
                        flush=True,
                    )
            # The raw limit in every repeat too: one measurement would catch whatever load the machine had then.
            t0 = time.perf_counter()
            raw = {**raw_limit(ds, model, data, rep), "rep": rep}
            raws.setdefault(ds, []).append(raw)
            print(
                f"bench:        {ds} raw limit r{rep}: {raw['raw_limit_s']} s/epoch "
                f"({raw['step_s_per_batch']} s per 8×512 batch; {time.perf_counter() - t0:.0f} s)",
                flush=True,
            )

    summary = summarize(runs, replays, raws)
    tgt = targets(summary, cache_note, cache is not None)
    notes = checks(runs, summary, replays)
    if cache is None:
        notes.insert(0, cache_note)
    ctx = {
        "runs": runs,
        "summary": summary,
        "replays": replays,
        "raws": raws,
        "targets": tgt,
        "notes": notes,
        "versions": versions(),
        "git": git_rev() + "; " + snapshot_note,
        "model_note": model_note,
        "model_cmd": model_cmd,
        "cache_note": cache_note,
        "started": started,
        "load_start": load_start,
        "load_end": os.getloadavg()[0],
        "elapsed_min": (time.perf_counter() - t_start) / 60,
    }
    (WORKDIR / "results.json").write_text(
        json.dumps(
            {k: v for k, v in ctx.items() if k != "replays"}
            | {"replays": {f"{d}/{p}": v for (d, p), v in replays.items()}},
            indent=1,
            default=str,
        ),
        encoding="utf-8",
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(report(ctx), encoding="utf-8")
    print_table(summary, tgt)
    for n in notes:
        print("note:", n)
    print(
        f"\nbench: {ctx['elapsed_min']:.1f} min; report {rel(RESULTS)}, raw JSON {rel(WORKDIR / 'results.json')}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
