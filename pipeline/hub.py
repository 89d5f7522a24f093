"""Where a named model comes from: a local folder, or a hub repo fetched through the local cache.
The one resolver behind every checkpoint and tokenizer that the pipeline and the trainer load
(MAGVIT-v2 here, MMaDA through trainer/model_io.py, which adds runs and URIs on top)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from huggingface_hub import snapshot_download


def hub_folder(path_or_hub_id: str, patterns: list[str]) -> Path:
    """A local folder as it is, or a hub repo's files matching `patterns` (no download when the
    cache holds them or HF_HUB_OFFLINE=1)."""
    path = Path(path_or_hub_id)
    if path.is_dir():
        return path
    if path.exists() or path_or_hub_id.startswith((".", "/")):
        raise ValueError(f"{path_or_hub_id}: not a model folder")
    try:
        return Path(snapshot_download(path_or_hub_id, allow_patterns=patterns))
    except Exception as e:
        raise ValueError(f"cannot find {path_or_hub_id!r} locally or in the hub or its cache "
                         f"(HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '0')}): {e}") from None


def portable_name(name: str) -> str:
    """How a version's lineage records a model or tokenizer, so a run in another folder finds it: a
    local folder by its absolute path (`demo-run/models/tok` typed in one folder means nothing in
    another), a hub id or a URI as given. The recorded sha256 beside it is checked on use."""
    path = Path(name)
    return str(path.resolve()) if path.exists() else name


def hub_revision(name: str) -> str | None:
    """The commit of a hub id's cached snapshot (what a version was made with, recorded beside the
    id: the hub's `main` moves), None for a local folder, a URI or an id not in the cache."""
    if Path(name).exists() or "://" in name:
        return None
    try:
        return Path(snapshot_download(name, local_files_only=True)).name
    except Exception:  # not cached, not an id: nothing to record
        return None


def load_text_tokenizer(name: str):
    """A text tokenizer by hub id or folder (the LLaDA tokenizer of the -M family)."""
    from transformers import AutoTokenizer  # why: transformers takes seconds to import; only tokenizer users pay

    return AutoTokenizer.from_pretrained(name)


def sha256_file(path: Path) -> str:
    """A checkpoint file's hash, for the lineage that names it."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of what decides the ids: the vocabulary and the special tokens."""
    spec = {"vocab": sorted(tokenizer.get_vocab().items()), "special": tokenizer.all_special_tokens}
    return hashlib.sha256(json.dumps(spec).encode()).hexdigest()


def load_recorded_tokenizer(tokenized: dict, override: str | None = None):
    """The text tokenizer a tokenized version was made with (its tokenize lineage), or `override`,
    checked against the recorded fingerprint: another tokenizer, even of the same size, would
    read every id as another word."""
    name = override or tokenized.get("text_tokenizer")
    if not name:
        raise ValueError("the version records no text tokenizer: give text_tokenizer=")
    tokenizer = load_text_tokenizer(name)
    recorded = tokenized.get("text_tokenizer_sha256")
    if recorded and tokenizer_fingerprint(tokenizer) != recorded:
        raise ValueError(f"the text tokenizer {name} is not the one the version was tokenized with (its "
                         f"fingerprint {tokenizer_fingerprint(tokenizer)[:12]}, recorded {recorded[:12]} for "
                         f"{tokenized.get('text_tokenizer')}): give that one, or tokenize again")
    return tokenizer
