"""Fingerprinted cache of tokenized examples: an unchanged re-run does no tokenization, any change misses.

The key hashes everything the examples depend on: the data (file contents; a local dataset folder's files; a hub
dataset's name, config, split and revision), the tokenizer (its full definition and special tokens), the chat
template text, the masking / truncation / packing / length / sampling / bad-row / split options, and the versions of
this data code and of the libraries that tokenize and render. It never depends on file times.

An entry is a folder `<cache_dir>/<key>/`: a token store (data/store.py: per split, flat memory-mapped arrays of
token ids, trained-token mask, offsets and sources) and `meta.json` (statistics, sizes, and a SHA-256 of every file).
It is written to a temporary folder as the examples are made and renamed into place, so a killed run never leaves a
half entry; an entry that fails any check on reading (missing file, checksum, sizes) is ignored, deleted and rebuilt.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Bump when the data code changes what it produces for the same inputs (rendering, spans, masking, truncation).
DATA_CODE_VERSION = "1"
DEFAULT_CACHE_DIR = Path("~/.cache/sftforge/tokenized")
_FORMAT = 2  # layout of an entry on disk (2: a memory-mapped token store, data/store.py)


@dataclass
class CacheStatus:
    """What the cache did in this run, for the start-up summary."""

    state: str  # "hit" | "stored" | "miss" (not stored: see note) | "off"
    key: str = ""
    seconds: float = 0.0
    note: str = ""

    def describe(self) -> str:
        short = f"key {self.key[:8]}…"
        if self.state == "hit":
            also = f"; {self.note}" if self.note else ""
            return f"hit ({short}, loaded in {self.seconds:.2f} s; no tokenization{also})"
        if self.state == "stored":
            return f"miss → stored ({short}, {self.note})"
        if self.state == "miss":
            return f"miss, not stored ({self.note})"
        return "off (preprocessing_cache: false)"


def cache_root(cache_dir: str | None) -> Path:
    return Path(cache_dir or os.environ.get("SFTFORGE_CACHE") or DEFAULT_CACHE_DIR).expanduser()


# ---------------------------------------------------------------- the key


def fingerprint(data: Any, spec: Any, seed: int) -> str:
    """SHA-256 over every input of preprocessing. `data`: DataArguments; `spec`: TokenizeSpec."""
    from sftforge.data.readers import resolve_key_files

    inputs = {
        "format": _FORMAT,
        "data_code": [DATA_CODE_VERSION, _data_code_digest()],
        "libraries": _library_versions(),
        "train": (
            _files_digest(resolve_key_files(data.train_data_path, "train_data_path"))
            if data.train_data_path
            else _dataset_digest(data.dataset_name, data.dataset_config, data.dataset_train_split)
        ),
        "eval": (
            _files_digest(resolve_key_files(data.eval_data_path, "eval_data_path"))
            if data.eval_data_path
            else _dataset_digest(data.dataset_name, data.dataset_config, data.dataset_test_split)
            if data.dataset_name and data.dataset_test_split
            else None
        ),
        "tokenizer": tokenizer_digest(spec.tokenizer),
        "chat_template": spec.template.text,
        "max_length": spec.max_length,
        "train_on": spec.options.train_on,
        "train_on_reasoning": spec.options.train_on_reasoning,
        "truncation": spec.truncation,
        "multi_turn": spec.multi_turn,
        "preference": spec.preference,  # pairs / rated answers are other examples than conversations
        "columns": getattr(data, "columns", None),  # renamed keys read other fields: other examples
        "tags": getattr(data, "tags", None),
        "packing": bool(data.packing),
        "max_samples": data.max_samples,
        "on_bad_rows": data.on_bad_rows,
        # The hold-out split is cached with the examples, so its ratio and seed are inputs too.
        "eval_split_ratio": data.eval_split_ratio,
        "seed": seed if data.eval_split_ratio > 0 else None,
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()


def pretrain_fingerprint(data: Any, tokenizer: Any) -> str:
    """SHA-256 over every input of the pretraining documents' tokenization (stage pt). The blocks are not cached:
    they are rebuilt from the cached documents in a blink, so block_size and the block options are no inputs."""
    from sftforge.data.readers import resolve_key_files

    inputs = {
        "format": _FORMAT,
        "stage": "pt",
        "data_code": [DATA_CODE_VERSION, _data_code_digest()],
        "libraries": _library_versions(),
        "train": (
            _files_digest(resolve_key_files(data.train_data_path, "train_data_path", text_files=True))
            if data.train_data_path
            else _dataset_digest(data.dataset_name, data.dataset_config, data.dataset_train_split)
        ),
        "eval": (
            _files_digest(resolve_key_files(data.eval_data_path, "eval_data_path", text_files=True))
            if data.eval_data_path
            else _dataset_digest(data.dataset_name, data.dataset_config, data.dataset_test_split)
            if data.dataset_name and data.dataset_test_split
            else None
        ),
        "tokenizer": tokenizer_digest(tokenizer),
        "text_column": data.text_column,
        "txt_documents": data.txt_documents,
        "max_samples": data.max_samples,
        "on_bad_rows": data.on_bad_rows,
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()


def data_digest(data: Any) -> str:
    """SHA-256 of the training data itself (file contents and paths, or the dataset's name/config/split): what a
    resumed run must share with the interrupted one for the data position to mean the same examples."""
    from sftforge.data.readers import resolve_key_files

    text_files = getattr(data, "stage", "sft") != "sft"  # pretraining reads .txt files too
    if getattr(data, "datasets", None):  # a mix: every source's data and how the mix is made
        from sftforge.data.mix_sources import parse_mix_sources

        sources = parse_mix_sources(
            data.datasets, data.interleave_probs, columns=data.columns, tags=data.tags
        )
        inputs: Any = [
            [
                _files_digest(resolve_key_files(list(s.path), "datasets"))
                if s.path
                else _dataset_digest(s.dataset_name, s.dataset_config, s.split),
                s.weight, s.max_samples, s.epochs, s.max_tokens, s.columns, s.tags,
            ]
            for s in sources
        ] + [data.mix_strategy, data.mix_by]  # fmt: skip
    else:
        inputs = (
            _files_digest(resolve_key_files(data.train_data_path, "train_data_path", text_files))
            if data.train_data_path
            else _dataset_digest(data.dataset_name, data.dataset_config, data.dataset_train_split)
        )
    return hashlib.sha256(json.dumps([inputs, data.max_samples], default=str).encode()).hexdigest()


def tokenizer_digest(tokenizer: Any) -> str:
    """The tokenizer's full definition (vocabulary, merges, added tokens, normalizer, pre-tokenizer) + its specials."""
    h = hashlib.sha256()
    h.update(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:  # a Python tokenizer: its vocabulary and added tokens
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    specials = {
        "map": tokenizer.special_tokens_map,
        "added": {
            i: str(t) for i, t in sorted((getattr(tokenizer, "added_tokens_decoder", None) or {}).items())
        },
        "split_special_tokens": getattr(tokenizer, "split_special_tokens", False),
        "eos_token_id": tokenizer.eos_token_id,
    }
    h.update(json.dumps(specials, sort_keys=True, default=str).encode())
    return h.hexdigest()


def _files_digest(paths: list[Path]) -> list[tuple[str, str]]:
    # The path is part of it: examples remember their `file:line`.
    return [(str(p.resolve()), file_sha256(p)) for p in paths]


def _dataset_digest(name: str | None, config: str | None, split: str | None) -> Any:
    local = Path(name).expanduser() if name else None
    if local is not None and local.exists():
        files = sorted(p for p in local.rglob("*") if p.is_file()) if local.is_dir() else [local]
        return {"local": _files_digest(files), "config": config, "split": split}
    # A hub dataset: what names it (its files are not fetched just to fingerprint them).
    return {"hub": name, "config": config, "split": split, "revision": None}


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _data_code_digest() -> str:
    """The source of the data package itself, so that an edit to it never reuses stale examples (the constant
    above is for changes elsewhere that alter what the data code produces)."""
    h = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def _library_versions() -> dict[str, str]:
    import jinja2
    import tokenizers
    import transformers

    return {
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "jinja2": jinja2.__version__,
    }


# ---------------------------------------------------------------- entries: token stores with a meta.json


def new_entry(root: Path, key: str) -> Path:
    """A temporary folder beside the entries, to write a store into; `commit_entry` renames it into place."""
    root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{key[:16]}-", dir=root))


def commit_entry(
    tmp: Path, root: Path, key: str, splits: dict[str, dict[str, Any]], meta: dict[str, Any]
) -> Path:
    """Finish an entry written into `tmp`: its meta.json (split sizes and the SHA-256 of every file, the
    statistics), then one rename. Returns the entry's folder (another process's, if it stored the same key
    first)."""
    doc = {"format": _FORMAT, "key": key, "splits": splits, "meta": meta}
    doc["digest"] = _doc_digest(doc)  # meta.json checks itself too
    (tmp / "meta.json").write_text(json.dumps(doc), encoding="utf-8")
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; an entry is as readable as any cache file
    try:
        tmp.rename(root / key)
    except OSError:
        if not (root / key).is_dir():  # not "another process stored it first"
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    return root / key


def open_entry(root: Path, key: str) -> tuple[Path, dict[str, Any]] | None:
    """(folder, meta.json) of a complete, intact entry; None otherwise (a damaged entry is deleted). Every file's
    SHA-256 is checked (about 1.5 GB/s: a second for a million tokenized rows)."""
    entry = root / key
    if not entry.is_dir():
        return None
    try:
        doc = json.loads((entry / "meta.json").read_text(encoding="utf-8"))
        if (
            doc.get("format") != _FORMAT
            or doc.get("key") != key
            or doc.pop("digest", None) != _doc_digest(doc)
        ):
            raise ValueError("entry of another format or key, or an altered meta.json")
        from sftforge.data.store import TokenStore

        for split, sizes in doc["splits"].items():
            for name, digest in sizes["checksums"].items():
                if file_sha256(entry / name) != digest:
                    raise ValueError(f"{name}: checksum mismatch")
            TokenStore(entry, split, sizes)  # the arrays fit together and match the recorded sizes
        return entry, doc
    except Exception:  # noqa: BLE001 — anything wrong with an entry means: do not trust it, rebuild it
        shutil.rmtree(entry, ignore_errors=True)
        return None


def scratch_folder() -> Path:
    """A private folder for a store that is not cached (`preprocessing_cache: false`, or an unwritable cache):
    under $TMPDIR, removed when this process ends."""
    folder = Path(tempfile.mkdtemp(prefix="sftforge-tokens-"))
    atexit.register(shutil.rmtree, folder, True)
    return folder


def _doc_digest(doc: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()
