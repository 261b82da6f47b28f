#!/usr/bin/env python3
"""`make bench-scale`: the "millions of rows" benchmark (issue 15). Not a test: nothing here is asserted by pytest.

Synthetic sets of N rows built from the shipped fixtures (default 100k, 300k, 1M), the same tiny model as
`make bench`, and per size four fresh processes, each with its own fresh output dir (and cache dir):

    sftforge cold, 1 core     python -m sftforge train benchmarks/recipes/bench.yaml ... --packing true
                              --max_steps 1 --dataset_num_proc 1 --cache_dir FRESH
    sftforge cold, all cores  the same with --dataset_num_proc auto (a worker per usable core)
    sftforge cached           the same again on the cache dir the all-core cold run filled (its prep_s is the
                              cached start-up)
    TRL                       python ../shared/bench/peer_trl.py ... --packing bfd --max_steps 1 (TRL preprocesses
                              in one process, its default)

Each run's process tree (the process and all its descendants, from /proc) is sampled: the summed RSS every 0.1 s,
the summed PSS/USS about once a second (PSS splits shared pages — fork copy-on-write, mmap'd cache files — between
the processes that map them, so it is the fair measure of a tree; reading it costs ~12 ms per 600 MB process). The
main process's own ru_maxrss (sftforge metrics.json / the peer's JSON `peak_rss_mb`) is reported next to them. The
targets use the tree peak RSS = max(sampled tree RSS, main ru_maxrss): both are lower bounds of the true peak (the
sampler can miss a short spike; ru_maxrss leaves out the workers).

Targets (issue 15): tree peak RSS at 1M rows ≤ 2 GB and ≤ TRL's; RSS(1M) ≤ 1.3 × RSS(100k); cold preprocessing
(all cores) ≥ 3 × TRL's rows/s; cached start-up at 1M ≤ 5 s.

Writes benchmarks/SCALE_RESULTS.md (BENCH_SCALE_RESULTS) and results.json in the workdir.

Environment (all optional):
  BENCH_SCALE_SIZES=100000,300000,1000000   rows per synthetic set
  BENCH_SCALE_TOOLS=sftforge,trl            run only one tool with `sftforge` or `trl`
  BENCH_SCALE_TIMEOUT=3600                  seconds before one run is killed (reported as a timeout; the rest runs)
  BENCH_SCALE_WORKDIR=outputs/bench-scale   data, model, run folders, logs, results.json
  BENCH_SCALE_RESULTS=benchmarks/SCALE_RESULTS.md
  BENCH_SCALE_RESUME=1                      reuse every run whose result file shows it finished (ok or timed out)
  BENCH_THREADS=1, BENCH_SHARED=../shared   as in `make bench` (bench.py)
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench as B  # noqa: E402  (the `make bench` harness: model, snapshot, child env, command lines, formatting)

SIZES = [int(s) for s in os.environ.get("BENCH_SCALE_SIZES", "100000,300000,1000000").split(",") if s.strip()]
TOOLS = [t.strip() for t in os.environ.get("BENCH_SCALE_TOOLS", "sftforge,trl").split(",") if t.strip()]
TIMEOUT = B.env_int("BENCH_SCALE_TIMEOUT", 3600)
WORKDIR = Path(os.environ.get("BENCH_SCALE_WORKDIR", B.REPO / "outputs" / "bench-scale")).resolve()
RESULTS = Path(os.environ.get("BENCH_SCALE_RESULTS", HERE / "SCALE_RESULTS.md")).resolve()
RESUME = os.environ.get("BENCH_SCALE_RESUME", "") not in ("", "0")
CORES = len(os.sched_getaffinity(0))
SAMPLE_S = 0.1  # RSS of the process tree
PSS_EVERY_S, PSS_DUTY = 1.0, 0.02  # PSS/USS: at most once a second and 2% of one core

# bench.py's helpers read these module globals when called: point them at this harness's workdir and settings.
B.WORKDIR = WORKDIR
B.SNAPSHOT = WORKDIR / "snapshot" / "src"
B.RESUME = RESUME
B.MAX_STEPS, B.SMOKE = -1, False  # every run here is 1 step; bench.py's smoke knob must not add a second one

# Fixture files whose every row the peer's `to_messages` reads (Alpaca, ShareGPT from/value, messages with typed
# content parts); c4_demo.jsonl is plain text (pretraining), which the peer cannot read, so it is not used.
SOURCES = ["alpaca_en_demo.json", "alpaca_zh_demo.json", "glaive_toolcall_en_demo.json", "v1_sft_demo.jsonl"]
DATA_VERSION = 1  # bump when the generator changes: existing files are then rebuilt

T_RSS_MB, T_RSS_GROWTH, T_PREP_COLD, T_CACHED_S = 2048, 1.3, 3.0, 5.0

RUNS = [  # (key, label)
    ("sf_cold_1", "sftforge cold, 1 process (dataset_num_proc 1)"),
    ("sf_cold_all", f"sftforge cold, all cores (dataset_num_proc auto: {CORES})"),
    ("sf_cached", "sftforge cached"),
    ("trl", "TRL (1 process)"),
    ("trl_read", "TRL reading the file"),
]
LABEL = dict(RUNS)


# ---------------------------------------------------------------------------------------------------------------
# Synthetic data
# ---------------------------------------------------------------------------------------------------------------

MARKER = "\x00SCALE-SLOT\x00"


def _mark_first_user(row: dict) -> tuple[dict, str]:
    """A copy of `row` with its first user text replaced by MARKER, and that text."""
    row = json.loads(json.dumps(row))
    if "instruction" in row:
        text, row["instruction"] = row["instruction"], MARKER
        return row, text
    turns = row.get("conversations") or row.get("messages")
    for t in turns:
        role = t.get("from", t.get("role"))
        if role not in ("human", "user"):
            continue
        key = "value" if "value" in t else "content"
        if isinstance(t[key], list):  # typed content parts: the first text part
            part = next(p for p in t[key] if isinstance(p, dict) and ("value" in p or "text" in p))
            pkey = "value" if "value" in part else "text"
            text, part[pkey] = part[pkey], MARKER
        else:
            text, t[key] = t[key], MARKER
        return row, text
    raise ValueError(f"no user turn in {row}")


def base_rows() -> list[tuple[str, str, str]]:
    """(json before the slot, first user text, json after the slot) per fixture row, in a fixed shuffled order so
    that every prefix of the synthetic set mixes all formats."""
    out = []
    slot = json.dumps(MARKER, ensure_ascii=False)
    for name in SOURCES:
        path = B.DATA_DIR / name
        text = path.read_text(encoding="utf-8")
        rows = (
            [json.loads(ln) for ln in text.splitlines() if ln.strip()]
            if name.endswith(".jsonl")
            else json.loads(text)
        )
        for row in rows:
            marked, first = _mark_first_user(row)
            before, after = json.dumps(marked, ensure_ascii=False).split(slot)
            out.append((before, first, after))
    random.Random(0).shuffle(out)
    return out


def build_data(n: int) -> tuple[Path, str]:
    """outputs/bench-scale/data/rows-N.jsonl, written streaming; kept when its stamp says it has N rows of this
    generator version. Row i is fixture row i mod 2,799 with " (#i)" appended to its first user text."""
    path = WORKDIR / "data" / f"rows-{n}.jsonl"
    stamp = path.with_suffix(".stamp.json")
    key = {"rows": n, "version": DATA_VERSION, "sources": SOURCES}
    if (
        path.is_file()
        and stamp.is_file()
        and json.loads(stamp.read_text()) == {**key, "bytes": path.stat().st_size}
    ):
        return path, "kept"
    path.parent.mkdir(parents=True, exist_ok=True)
    base = base_rows()
    tmp = path.with_suffix(".tmp")
    t0 = time.perf_counter()
    with open(tmp, "w", encoding="utf-8") as f:
        for i in range(n):
            before, first, after = base[i % len(base)]
            f.write(before + json.dumps(f"{first} (#{i})", ensure_ascii=False) + after + "\n")
    tmp.replace(path)
    stamp.write_text(json.dumps({**key, "bytes": path.stat().st_size}))
    return path, f"written in {time.perf_counter() - t0:.1f} s"


# ---------------------------------------------------------------------------------------------------------------
# One measured run
# ---------------------------------------------------------------------------------------------------------------


PAGE = os.sysconf("SC_PAGE_SIZE")


def tree_pids(pid: int) -> list[int]:
    """`pid` and all its descendants, from /proc/PID/task/TID/children (0.03 ms; psutil's children(recursive=True)
    scans every process of the machine: 2 ms)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except OSError:
            pass  # exited meanwhile
    return out


def rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0


def pss_uss_bytes(pid: int) -> tuple[int, int]:
    """(PSS, USS) from /proc/PID/smaps_rollup (what psutil's memory_full_info reads). It walks the page tables:
    measured 12 ms for a 600 MB process, so it is sampled less often than RSS (see measure)."""
    pss = uss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key == "Pss":
                    pss = int(rest.split()[0]) * 1024
                elif key in ("Private_Clean", "Private_Dirty"):
                    uss += int(rest.split()[0]) * 1024
    except (OSError, ValueError):
        pass
    return pss, uss


def measure(cmd: list[str], name: str) -> dict[str, Any]:
    """Run `cmd` (fresh process, own session) with its stdout in logs/NAME.stdout and stderr in logs/NAME.log,
    sampling its process tree: summed RSS every SAMPLE_S seconds (/proc/PID/statm, microseconds), summed PSS and
    USS at most every PSS_EVERY_S seconds and never more than PSS_DUTY of the time (smaps_rollup is costly on
    large processes, and this machine's cores are the ones being measured). Kills it after TIMEOUT."""
    log = WORKDIR / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()[0]
    peak = {"rss": 0, "pss": 0, "uss": 0}
    procs_max, samples, rss_cost, pss_samples, pss_cost, next_pss = 0, 0, 0.0, 0, 0.0, 0.0
    t0 = time.perf_counter()
    with (
        open(log, "w", encoding="utf-8") as err,
        open(log.with_suffix(".stdout"), "w+", encoding="utf-8") as out,
    ):
        err.write("$ " + B.shell(cmd) + "\n")
        err.flush()
        proc = subprocess.Popen(
            cmd, cwd=B.REPO, env=B.child_env(), stdout=out, stderr=err, text=True, start_new_session=True
        )
        status = "ok"
        try:
            while proc.poll() is None:
                now = time.perf_counter()
                if now - t0 > TIMEOUT:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                    status = "timeout"
                    break
                pids = tree_pids(proc.pid)
                peak["rss"] = max(peak["rss"], sum(rss_bytes(p) for p in pids))
                procs_max = max(procs_max, len(pids))
                samples += 1
                t1 = time.perf_counter()
                rss_cost += t1 - now
                if t1 >= next_pss:
                    both = [pss_uss_bytes(p) for p in pids]
                    peak["pss"] = max(peak["pss"], sum(x[0] for x in both))
                    peak["uss"] = max(peak["uss"], sum(x[1] for x in both))
                    cost = time.perf_counter() - t1
                    pss_samples += 1
                    pss_cost += cost
                    next_pss = t1 + max(PSS_EVERY_S, cost / PSS_DUTY)
                time.sleep(max(0.0, SAMPLE_S - (time.perf_counter() - now)))
        finally:  # the child has its own session: Ctrl-C here does not reach it, so it must not outlive us
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        wall = time.perf_counter() - t0
        rc = proc.returncode
        out.seek(0)
        stdout = out.read()
    if status == "ok" and rc != 0:
        status = f"failed (exit {rc})"
    mb = 1024 * 1024
    return {
        "status": status,
        "rc": rc,
        "cmd": cmd,
        "wall_s": round(wall, 2),
        "load_avg": round(load, 2),
        "tree_rss_peak_mb": round(peak["rss"] / mb, 1),
        "tree_pss_peak_mb": round(peak["pss"] / mb, 1) if pss_samples else None,
        "tree_uss_peak_mb": round(peak["uss"] / mb, 1) if pss_samples else None,
        "tree_procs_max": procs_max,
        "samples": samples,
        "rss_sample_ms": round(1000 * rss_cost / samples, 3) if samples else None,
        "pss_samples": pss_samples,
        "pss_sample_ms": round(1000 * pss_cost / pss_samples, 2) if pss_samples else None,
        "stdout": stdout,
    }


def run_once(name: str, cmd: list[str], prepare) -> dict[str, Any]:
    """measure() with BENCH_SCALE_RESUME: a run whose result file says ok or timeout is not run again."""
    res_path = WORKDIR / "runs" / f"{name}.json"
    if RESUME and res_path.is_file():
        r = json.loads(res_path.read_text(encoding="utf-8"))
        if r.get("status") in ("ok", "timeout") and r.get("cmd") == cmd:
            return {**r, "resumed": True}
    prepare()
    r = measure(cmd, name)
    res_path.parent.mkdir(parents=True, exist_ok=True)
    res_path.write_text(json.dumps(r, indent=1), encoding="utf-8")
    return r


def sftforge_run(key: str, n: int, model: Path, data: Path, cache: list[str], cache_dir: Path) -> dict:
    name = f"{n}-{key}"
    out = WORKDIR / "runs" / name
    # 1: one process (plus its tokenizer thread); auto: a worker per usable core, each reading its own share
    procs = "1" if key == "sf_cold_1" else "auto"
    cmd = B.sftforge_cmd(model, data, out, True, [*cache, "--cache_dir", str(cache_dir)])
    cmd += ["--max_steps", "1", "--dataset_num_proc", procs]

    def prepare() -> None:
        shutil.rmtree(out, ignore_errors=True)
        if key != "sf_cached":
            shutil.rmtree(cache_dir, ignore_errors=True)  # cold: an empty cache dir

    r = run_once(name, cmd, prepare)
    if r["status"] == "ok" and "prep_s" not in r:
        m = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
        info = B.parse_summary(r["stdout"])
        r |= {
            "prep_s": m["prep_s"],
            "main_ru_maxrss_mb": m["peak_rss_mb"],
            "rows_read": info.get("rows_read"),
            "rows_kept": info.get("rows_kept"),
            "dataset_tokens": info.get("dataset_tokens"),
            "cache_line": next(
                (ln.strip() for ln in r["stdout"].splitlines() if ln.strip().startswith("cache ")), None
            ),
        }
        (WORKDIR / "runs" / f"{name}.json").write_text(json.dumps(r, indent=1), encoding="utf-8")
    return r


def trl_run(n: int, model: Path, data: Path) -> dict:
    name = f"{n}-trl"
    cmd = B.trl_cmd(model, data, "bfd") + ["--max_steps", "1"]
    r = run_once(name, cmd, lambda: None)
    if r["status"] == "ok" and "prep_s" not in r:
        j = B.last_json(r["stdout"])
        r |= {
            "prep_s": j["prep_s"],
            "load_s": j.get("load_s"),
            "main_ru_maxrss_mb": j["peak_rss_mb"],
            "dataset_tokens": j.get("dataset_tokens"),
            "trl_version": j.get("trl_version"),
        }
        (WORKDIR / "runs" / f"{name}.json").write_text(json.dumps(r, indent=1), encoding="utf-8")
    return r


# The peer's own lines before `SFTTrainer(...)` that read the file (its `read_rows`, `to_messages` and
# `Dataset.from_list`, imported from the peer script as it is): its prep_s starts after them, where sftforge's
# prep_s includes reading and converting the file. Timed alone, so that both tools can be compared file → tokens.
_TRL_READ = """
import importlib.util, json, sys, time
spec = importlib.util.spec_from_file_location("peer_trl", sys.argv[1])
peer = importlib.util.module_from_spec(spec)
spec.loader.exec_module(peer)
from datasets import Dataset
t0 = time.perf_counter()
ds = Dataset.from_list([peer.to_messages(r) for r in peer.read_rows(sys.argv[2])])
print(json.dumps({"read_s": round(time.perf_counter() - t0, 3), "rows": len(ds)}))
"""


def trl_read_run(n: int, data: Path) -> dict:
    name = f"{n}-trl_read"
    r = run_once(name, [B.PY, "-c", _TRL_READ, str(B.PEER), str(data)], lambda: None)
    if r["status"] == "ok" and "read_s" not in r:
        j = B.last_json(r["stdout"])
        # prep_s too, so that the per-size table shows it in the same column (and rows/s as its rate)
        r |= {"read_s": j["read_s"], "prep_s": j["read_s"], "rows_read": j["rows"]}
        (WORKDIR / "runs" / f"{name}.json").write_text(json.dumps(r, indent=1), encoding="utf-8")
    return r


def trl_file_s(per: dict[str, dict]) -> float | None:
    """TRL's file → tokens seconds: reading + converting the file (trl_read) + its prep_s."""
    t, rd = per.get("trl", {}), per.get("trl_read", {})
    if t.get("status") != "ok" or rd.get("status") != "ok":
        return None
    return t["prep_s"] + rd["read_s"]


# ---------------------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------------------


def peak_rss(r: dict | None) -> float | None:
    """Tree peak RSS for the targets: max(sampled tree RSS, main ru_maxrss), both lower bounds of the true peak."""
    if not r or r.get("status") != "ok":
        return None
    return max(x for x in (r.get("tree_rss_peak_mb"), r.get("main_ru_maxrss_mb"), 0.0) if x is not None)


def rows_s(n: int, r: dict | None) -> float | None:
    return round(n / r["prep_s"], 1) if r and r.get("prep_s") else None


def targets(results: dict[int, dict[str, dict]]) -> list[list[Any]]:
    """[target, measured, verdict] rows. RSS = peak summed RSS of the process tree; sftforge's = the larger of its
    two cold runs. Judged at the largest and smallest sizes run (the issue's: 1M and 100k)."""
    big, small = max(results), min(results)
    tag = "" if big == 1_000_000 else f" (at {big:,} rows, not 1M: not the issue's size)"

    def verdict(ok: bool | None) -> str:
        return "–" if ok is None else ("PASS" if ok else "FAIL")

    def sf_rss(n: int) -> float | None:
        vals = [peak_rss(results[n].get(k)) for k in ("sf_cold_1", "sf_cold_all")]
        vals = [v for v in vals if v]
        return max(vals) if vals else None

    out = []
    rss_big, rss_small = sf_rss(big), sf_rss(small)
    trl_big = results[big].get("trl", {})
    trl_rss = peak_rss(trl_big)
    out.append(
        [
            f"peak RSS ≤ {T_RSS_MB} MB{tag}",
            f"{B.fmt(rss_big)} MB",
            verdict(None if rss_big is None else rss_big <= T_RSS_MB),
        ]
    )
    out.append(
        [
            f"peak RSS ≤ TRL's{tag}",
            f"{B.fmt(rss_big)} vs {B.fmt(trl_rss)} MB",
            verdict(None if rss_big is None or trl_rss is None else rss_big <= trl_rss),
        ]
    )
    growth = B.ratio(rss_big, rss_small) if big != small else None
    out.append(
        [
            f"RSS({big:,}) ≤ {T_RSS_GROWTH} × RSS({small:,})",
            f"{B.fmt(growth)}×",
            verdict(None if growth is None else growth <= T_RSS_GROWTH),
        ]
    )
    for n in sorted(results):
        a, t = rows_s(n, results[n].get("sf_cold_all")), rows_s(n, results[n].get("trl"))
        file_s = trl_file_s(results[n])
        f = round(n / file_s, 1) if file_s else None
        x, xf = B.ratio(a, t), B.ratio(a, f)
        # Judged file → tokens, the scope of sftforge's prep_s; the peer's own prep_s (which starts after it has
        # read and converted the file) is shown next to it.
        out.append(
            [
                f"cold preprocessing (all cores), file → tokens, ≥ {T_PREP_COLD} × TRL rows/s at {n:,}",
                f"{B.fmt(xf)}× ({B.fmt(a)} vs {B.fmt(f)} rows/s)",
                verdict(None if xf is None else xf >= T_PREP_COLD),
            ]
        )
        out.append(
            [
                f"the same against TRL's prep_s alone (without reading the file) at {n:,}",
                f"{B.fmt(x)}× ({B.fmt(a)} vs {B.fmt(t)} rows/s)",
                "≥ 3×" if x is not None and x >= T_PREP_COLD else "< 3×" if x is not None else "–",
            ]
        )
    c = results[big].get("sf_cached", {})
    cs = c.get("prep_s") if c.get("status") == "ok" else None
    out.append(
        [
            f"cached start-up ≤ {T_CACHED_S} s{tag}",
            f"{B.fmt(cs)} s",
            verdict(None if cs is None else cs <= T_CACHED_S),
        ]
    )
    return out


def report(ctx: dict[str, Any]) -> str:
    v = ctx["versions"]
    results: dict[int, dict[str, dict]] = ctx["results"]
    small = min(results) < 100_000
    L = ["# sftforge vs TRL: millions of rows (`make bench-scale`)", ""]
    if small:
        L += ["**SMOKE-SIZED RUN (fewer than 100k rows): the numbers say nothing about scale.**", ""]
    L += [
        f"Generated by `benchmarks/scale_bench.py` on {ctx['started']} ({ctx['elapsed_min']:.1f} min). Issue 15: peak "
        "memory and preprocessing speed of a 1-step run (preprocessing + first training step) on synthetic sets "
        "built from the shipped fixtures.",
        "",
        "## Machine",
        "",
        f"- {CORES} cores available ({os.cpu_count()} online), {B.cpu_name()}; RAM {ctx['ram_gb']} GB; "
        f"load average {ctx['load_start']:.2f} at the start, {ctx['load_end']:.2f} at the end",
        "- " + ", ".join(f"{k} {x}" for k, x in v.items()),
        f"- git {ctx['git']}",
        f"- {B.THREADS} OMP/MKL/Rayon thread(s) per process (BENCH_THREADS), both tools",
        "",
        "## Targets",
        "",
        "Peak RSS in the targets = the tree peak RSS of a run: max(peak of the summed RSS of its whole process tree, "
        f"sampled every {SAMPLE_S} s; the main process's ru_maxrss); sftforge's = the larger of its two cold runs. "
        "PSS (below) is the fairer measure when workers share pages; the targets use RSS as the issue states them.",
        "",
    ]
    L += B.table(["target", "measured", "verdict"], ctx["targets"])
    L += ["", "## Results per size", ""]
    hdr = [
        "run",
        "status",
        "prep_s",
        "rows/s",
        "tree RSS MB",
        "tree PSS MB",
        "tree USS MB",
        "main ru_maxrss MB",
        "peak RSS MB",
        "load_s",
        "procs",
        "wall s",
        "load",
    ]
    for n in sorted(results):
        data = ctx["data"][n]
        L += [f"### {n:,} rows", "", f"`{B.rel(data['path'])}` ({data['mb']} MB, {data['note']})", ""]
        rows = []
        for key, label in RUNS:
            r = results[n].get(key)
            if r is None:
                continue
            rows.append(
                [
                    label,
                    r["status"] + (" (resumed)" if r.get("resumed") else ""),
                    r.get("prep_s"),
                    rows_s(n, r),
                    r.get("tree_rss_peak_mb"),
                    r.get("tree_pss_peak_mb"),
                    r.get("tree_uss_peak_mb"),
                    r.get("main_ru_maxrss_mb"),
                    peak_rss(r),
                    r.get("load_s"),
                    r.get("tree_procs_max"),
                    r.get("wall_s"),
                    r.get("load_avg"),
                ]
            )
        L += B.table(hdr, rows)
        a, one, t = (rows_s(n, results[n].get(k)) for k in ("sf_cold_all", "sf_cold_1", "trl"))
        file_s = trl_file_s(results[n])
        f = round(n / file_s, 1) if file_s else None
        read = results[n].get("trl_read", {}).get("read_s")
        L += [
            "",
            f"sftforge / TRL rows/s, file → tokens (TRL: {B.fmt(read)} s reading and converting the file + its "
            f"prep_s): all cores {B.fmt(B.ratio(a, f))}×, 1 core {B.fmt(B.ratio(one, f))}×. Against TRL's prep_s "
            f"alone: all cores {B.fmt(B.ratio(a, t))}×, 1 core {B.fmt(B.ratio(one, t))}×.",
            "",
        ]
        c = results[n].get("sf_cached", {})
        if c.get("cache_line"):
            L += [f"Cached run: `{c['cache_line']}`", ""]
    L += [
        "## How each number is measured",
        "",
        "- **data**: `rows-N.jsonl`, row i = fixture row i mod 2,799 (alpaca_en_demo.json, alpaca_zh_demo.json, "
        "glaive_toolcall_en_demo.json, v1_sft_demo.jsonl, in a fixed shuffled order, each in its own format) with "
        '" (#i)" appended to the first user text, so no two rows are identical. Both tools read the same file. '
        "c4_demo.jsonl (plain text) is left out: the peer's `to_messages` cannot read it.",
        "- **prep_s**: sftforge `metrics.json` `prep_s` (read, convert, render, tokenize, mask — or load from the "
        "cache — then pack; tokenizer load excluded). TRL: the `SFTTrainer(...)` construction (tokenize, truncate, "
        "bfd-pack; its row conversion and `Dataset.from_list` are in `load_s`, not here). **rows/s** = N / prep_s. "
        "**TRL reading the file** (`trl_read`): the peer's own `read_rows` + `to_messages` + `Dataset.from_list`, "
        "imported from the peer script and timed alone in a fresh process (its prep_s column shows that time); "
        "TRL's **file → tokens** time = that + its prep_s, the same scope as sftforge's prep_s, and the one the "
        "speed target is judged on.",
        "- **cold** = a fresh, empty `--cache_dir`; **cached** = the cache dir the all-core cold run filled; its "
        "prep_s is the cached start-up.",
        "- **tree RSS / PSS / USS**: the process and all its descendants (`/proc/PID/task/*/children`), summed, peak "
        f"over the run. RSS (`/proc/PID/statm`) every {SAMPLE_S} s; PSS and USS (`/proc/PID/smaps_rollup`, what "
        f"psutil's `memory_full_info` reads) at most every {PSS_EVERY_S:.0f} s and at most {PSS_DUTY:.0%} of one core, "
        "because reading them walks the page tables (median cost here: "
        f"{ctx['sample_ms']['rss']} ms per RSS sample, {ctx['sample_ms']['pss']} ms per PSS sample of the tree). "
        "Summed RSS counts a page shared by several processes (fork copy-on-write, mmap'd files) once per process; "
        "PSS divides it among them (the fair measure of a tree); USS = pages only one process holds. A peak "
        "shorter than the sampling interval can be missed, PSS/USS peaks more easily than RSS.",
        "- **peak RSS (targets)** = max(tree RSS, main ru_maxrss): both are lower bounds of the tree's true peak.",
        "- **load_s** (TRL only): the peer's time before `SFTTrainer(...)`: imports, tokenizer and model load, reading "
        "the file, `to_messages` of every row and `Dataset.from_list` — reading and converting rows, which "
        "sftforge counts in its prep_s.",
        "- **main ru_maxrss**: the main process's own peak RSS (`getrusage(RUSAGE_SELF)`), as each tool reports it; "
        "it leaves out worker processes.",
        "- **wall s**: the whole process, start-up to exit (imports, model load, preprocessing, one step).",
        "",
        "## Command lines",
        "",
        "```bash",
        B.shell(ctx["model_cmd"]),
    ]
    for n in sorted(results):
        for key, _ in RUNS:
            r = results[n].get(key)
            if r:
                L.append(B.shell(r["cmd"]))
    L += ["```", ""]
    if ctx["notes"]:
        L += ["## Notes", ""] + [f"- {x}" for x in ctx["notes"]] + [""]
    return "\n".join(L) + "\n"


def main() -> int:
    if not SIZES or any(n < 1 for n in SIZES):
        raise SystemExit("bench-scale: BENCH_SCALE_SIZES must be positive row counts")
    if not TOOLS or set(TOOLS) - {"sftforge", "trl"}:
        raise SystemExit(f"bench-scale: BENCH_SCALE_TOOLS: {TOOLS}; choose from sftforge, trl")
    if "trl" in TOOLS:
        if not B.PEER.is_file():
            raise SystemExit(f"bench-scale: the peer script {B.PEER} is missing (set BENCH_SHARED)")
        try:
            import trl  # noqa: F401
        except ImportError:
            raise SystemExit('bench-scale: trl is not installed: pip install -e ".[bench]"') from None
    t_start = time.perf_counter()
    started = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    load_start = os.getloadavg()[0]
    WORKDIR.mkdir(parents=True, exist_ok=True)
    session = {"threads": B.THREADS, "model": B.MODEL_ARGS, "cores": CORES}
    spath = WORKDIR / "session.json"
    if RESUME and spath.is_file() and json.loads(spath.read_text()) != session:
        raise SystemExit(
            f"bench-scale: BENCH_SCALE_RESUME: settings differ ({spath.read_text()} vs {session})"
        )
    if not RESUME:
        for sub in ("runs", "logs", "cache"):  # data and model are kept
            shutil.rmtree(WORKDIR / sub, ignore_errors=True)
    spath.write_text(json.dumps(session))
    print(f"bench-scale: sizes {SIZES}, tools {TOOLS}, {CORES} cores, workdir {B.rel(WORKDIR)}", flush=True)
    snapshot_note = B.snapshot_source()
    print(f"bench-scale: {snapshot_note}", flush=True)
    model, model_cmd, model_note = B.build_model()
    print(f"bench-scale: {model_note}", flush=True)
    cache, cache_note = B.cache_support()
    if cache is None and "sftforge" in TOOLS:
        raise SystemExit(f"bench-scale: {cache_note}")

    results: dict[int, dict[str, dict]] = {}
    data_info: dict[int, dict] = {}
    for n in sorted(SIZES):
        t0 = time.perf_counter()
        data, note = build_data(n)
        data_info[n] = {"path": str(data), "mb": round(data.stat().st_size / 1e6, 1), "note": note}
        print(
            f"bench-scale: {B.rel(data)}: {data_info[n]['mb']} MB, {note} ({time.perf_counter() - t0:.1f} s)",
            flush=True,
        )
        per: dict[str, dict] = {}
        cache_dir = WORKDIR / "cache" / f"{n}-cold-all"
        for key, label in RUNS:
            if ("sftforge" if key.startswith("sf") else "trl") not in TOOLS:
                continue
            if key == "sf_cached" and per.get("sf_cold_all", {}).get("status") != "ok":
                continue  # nothing cached to start from
            if key == "trl":
                r = trl_run(n, model, data)
            elif key == "trl_read":
                r = trl_read_run(n, data)
                per[key] = r
                print(
                    f"bench-scale: {n:,} {label:<28} {r['status']}: read + convert + Dataset.from_list "
                    f"{B.fmt(r.get('read_s'))} s, tree RSS {B.fmt(r['tree_rss_peak_mb'])} MB",
                    flush=True,
                )
                continue
            else:
                cd = WORKDIR / "cache" / f"{n}-cold-1" if key == "sf_cold_1" else cache_dir
                r = sftforge_run(key, n, model, data, cache or [], cd)
            per[key] = r
            print(
                f"bench-scale: {n:,} {label:<28} {r['status']}: prep {B.fmt(r.get('prep_s'))} s "
                f"({B.fmt(rows_s(n, r))} rows/s), tree RSS {B.fmt(r['tree_rss_peak_mb'])} MB / PSS "
                f"{B.fmt(r['tree_pss_peak_mb'])} MB, main {B.fmt(r.get('main_ru_maxrss_mb'))} MB, "
                f"wall {r['wall_s']:.1f} s" + (" (resumed)" if r.get("resumed") else ""),
                flush=True,
            )
        # Caches are only read by the cached run: drop them once it is done (1M rows leave gigabytes).
        shutil.rmtree(WORKDIR / "cache" / f"{n}-cold-1", ignore_errors=True)
        if per.get("sf_cached", {}).get("status") == "ok":
            shutil.rmtree(cache_dir, ignore_errors=True)
        results[n] = per

    notes = []
    for n, per in results.items():
        for key, r in per.items():
            if r["status"] != "ok":
                notes.append(
                    f"{n:,} {LABEL[key]}: {r['status']} after {r['wall_s']:.0f} s (its memory peaks are those seen "
                    "until then; the targets that need it are not judged)"
                )
        c = per.get("sf_cached")
        if c and c.get("cache_line") and " hit" not in c["cache_line"]:
            notes.append(f"{n:,} cached: NOT a cache hit ({c['cache_line']})")
        sf, tr = per.get("sf_cold_all", {}), per.get("trl", {})
        if sf.get("rows_kept") is not None and sf["rows_kept"] != n:
            notes.append(f"{n:,}: sftforge kept {sf['rows_kept']:,} of {n:,} rows")
        if sf.get("dataset_tokens") and tr.get("dataset_tokens"):
            notes.append(
                f"{n:,}: tokens after preprocessing — sftforge {sf['dataset_tokens']:,}, TRL {tr['dataset_tokens']:,} "
                "(each tool's own chat template: the same rows, not the same token count)"
            )
    costs = {
        k: sorted(
            r[f"{k}_sample_ms"] for per in results.values() for r in per.values() if r.get(f"{k}_sample_ms")
        )
        for k in ("rss", "pss")
    }
    import psutil

    ctx = {
        "sizes": SIZES,
        "tools": TOOLS,
        "cores": CORES,
        "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "results": results,
        "data": data_info,
        "targets": targets(results) if results else [],
        "notes": [cache_note, *notes],
        "versions": B.versions(),
        "git": B.git_rev() + "; " + snapshot_note,
        "model_note": model_note,
        "model_cmd": model_cmd,
        "started": started,
        "load_start": load_start,
        "load_end": os.getloadavg()[0],
        "elapsed_min": (time.perf_counter() - t_start) / 60,
        "sample_ms": {k: c[len(c) // 2] if c else None for k, c in costs.items()},
        "platform": platform.platform(),
    }
    slim = {
        n: {k: {x: y for x, y in r.items() if x != "stdout"} for k, r in per.items()}
        for n, per in results.items()
    }
    (WORKDIR / "results.json").write_text(
        json.dumps({**ctx, "results": slim}, indent=1, default=str), encoding="utf-8"
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(report(ctx), encoding="utf-8")
    print("\n== targets ==")
    for t in ctx["targets"]:
        print(f"{t[2]:<5} {t[0]}: {t[1]}")
    print(
        f"\nbench-scale: {ctx['elapsed_min']:.1f} min; report {B.rel(RESULTS)}, raw JSON {B.rel(WORKDIR / 'results.json')}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
