"""The data contract: stage schemas, the version manifest the token layout and the sequence length contract (pyarrow only)."""

import paraforge_compat  # noqa: F401  (first, in every process: see the module)
from schemas.manifest import Counts, ShardInfo, VersionManifest
from schemas.sequence import SequenceConfig
from schemas.stages import (
    ANNOTATED,
    QUARANTINE,
    RAW,
    SCHEMAS,
    SCORE_AXES,
    SCORED,
    SCORES,
    TASKS,
    TEXT_FACTS,
    TOKENIZED,
    conform,
    get_schema,
    sample_id,
    schema_name,
    text_facts,
    tokenized_schema,
)
from schemas.token_layout import MMADA_M, TokenLayout

__all__ = [
    "ANNOTATED", "QUARANTINE", "RAW", "SCHEMAS", "SCORE_AXES", "SCORED", "SCORES", "TASKS", "TOKENIZED", "Counts",
    "MMADA_M", "SequenceConfig", "ShardInfo", "TokenLayout", "VersionManifest", "conform", "get_schema", "sample_id",
    "schema_name", "TEXT_FACTS", "text_facts", "tokenized_schema",
]
