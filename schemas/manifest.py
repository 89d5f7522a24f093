"""The version manifest: what a dataset version holds and where it came from."""

from __future__ import annotations

import dataclasses
import json
from typing import Any


@dataclasses.dataclass(frozen=True)
class ShardInfo:
    path: str  # relative to the version's folder
    rows: int
    bytes: int
    sha256: str


@dataclasses.dataclass(frozen=True)
class Counts:
    """Rows in = output + quarantined + duplicates, for every stage."""

    input: int
    output: int
    quarantined: int
    duplicates: int

    def reconciles(self) -> bool:
        return self.input == self.output + self.quarantined + self.duplicates

    def line(self) -> str:
        mark = "==" if self.reconciles() else "!="
        return (f"input {self.input} {mark} output {self.output} + quarantined {self.quarantined} "
                f"+ duplicates {self.duplicates}")


@dataclasses.dataclass(frozen=True)
class VersionManifest:
    dataset: str
    version: str
    stage: str  # "ingest" | "annotate" | "tokenize"
    schema: str  # full schema name, e.g. "raw/1"
    parent: str | None  # "NAME@VERSION" of the input version, None for ingest
    created_at: str  # ISO 8601, UTC
    counts: Counts
    shards: list[ShardInfo]
    quarantine_shards: list[ShardInfo]
    lineage: dict[str, Any]  # command, config, package_version, git_revision, sources, ...
    stats: dict[str, Any] = dataclasses.field(default_factory=dict)  # per-stage counters
    tags: list[str] = dataclasses.field(default_factory=list)  # filled in when shown, not stored

    @property
    def ref(self) -> str:
        return f"{self.dataset}@{self.version}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "VersionManifest":
        """A manifest as written by `to_json`; a field missing or of the wrong shape (a truncated or
        hand-edited file) is a ValueError naming it, not a TypeError deep inside."""
        try:
            d = dict(d)
            d["counts"] = Counts(**d["counts"])
            d["shards"] = [ShardInfo(**s) for s in d["shards"]]
            d["quarantine_shards"] = [ShardInfo(**s) for s in d["quarantine_shards"]]
            return cls(**d)
        except (KeyError, TypeError) as e:
            raise ValueError(f"not a valid version manifest ({type(e).__name__}: {e})") from None

    @classmethod
    def from_json(cls, text: str) -> "VersionManifest":
        return cls.from_dict(json.loads(text))
