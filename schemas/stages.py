"""Arrow schemas of each pipeline stage: the data contract between stages.

Each schema carries its name and version (`raw/1`) in the schema metadata under `paraforge.schema`,
so a shard read from anywhere says what it holds. A breaking change bumps the version; readers look
schemas up by full name.
"""

from __future__ import annotations

import hashlib

import pyarrow as pa
import pyarrow.compute as pc

SCHEMA_METADATA_KEY = b"paraforge.schema"
TASKS = ("edit", "generate")

_RAW_FIELDS = [
    pa.field("sample_id", pa.string(), nullable=False),  # see sample_id()
    pa.field("task", pa.string(), nullable=False),  # "edit" | "generate"
    pa.field("instruction", pa.string(), nullable=False),
    pa.field("input_image", pa.binary()),  # encoded PNG/JPEG/...; null for generate
    pa.field("output_image", pa.binary(), nullable=False),
    pa.field("input_width", pa.int32()),
    pa.field("input_height", pa.int32()),
    pa.field("output_width", pa.int32(), nullable=False),
    pa.field("output_height", pa.int32(), nullable=False),
    pa.field("source", pa.string(), nullable=False),  # the source's URI as given to ingest
    pa.field("source_ref", pa.string(), nullable=False),  # where in the source: "file:line", key, row
    pa.field("category", pa.string()),
    pa.field("meta", pa.string()),  # free-form JSON object
]

_ANNOTATION_FIELDS = [
    pa.field("reasoning", pa.string(), nullable=False),
    pa.field("annotator_model", pa.string(), nullable=False),
    pa.field("prompt_id", pa.string(), nullable=False),
    pa.field("prompt_hash", pa.string(), nullable=False),
    pa.field("sampling_params", pa.string()),  # JSON
    pa.field("attempts", pa.int32(), nullable=False),
    pa.field("finish_reason", pa.string()),
    pa.field("verdicts", pa.string()),  # JSON: validator name -> verdict of the accepted attempt
]

# The judge's four axes of `pipeline score`, 0-100 each. `consistency` (what the instruction does not
# ask to change stayed as it was) exists for edits only.
SCORE_AXES = ("instruction_following", "reasoning_following", "consistency", "quality")
# One value per axis, null where the axis does not apply or its judgement failed (`judge_errors` says which).
# float64: a threshold typed as 60.1 compares with a stored 60.1 exactly (float32 would store 60.0999...).
SCORES = pa.struct([pa.field(axis, pa.float64()) for axis in SCORE_AXES])
_PER_AXIS_TEXT = pa.struct([pa.field(axis, pa.string()) for axis in SCORE_AXES])

_SCORE_FIELDS = [
    pa.field("scores", SCORES, nullable=False),  # see SCORES
    pa.field("judge_errors", _PER_AXIS_TEXT, nullable=False),  # reason code of each failed judgement, else null
    pa.field("judge_answers", _PER_AXIS_TEXT, nullable=False),  # the judge's words, verbatim
    pa.field("judge_failed", pa.int32(), nullable=False),  # failed judgements of the row: never scored as 0
    pa.field("judge_model", pa.string(), nullable=False),
    pa.field("rubric_id", pa.string(), nullable=False),
    pa.field("rubric_hash", pa.string(), nullable=False),
]

QUARANTINE_FIELDS = [
    pa.field("stage", pa.string(), nullable=False),  # which stage rejected the row
    pa.field("reason", pa.string(), nullable=False),  # a stable reason code, e.g. "undecodable_image"
    pa.field("message", pa.string(), nullable=False),  # human-readable detail
    pa.field("source", pa.string()),
    pa.field("source_ref", pa.string()),
    pa.field("sample_id", pa.string()),  # known once the row's content could be hashed
    pa.field("record", pa.string()),  # the offending row as JSON, image bytes left out
]


def _named(name: str, fields: list[pa.Field]) -> pa.Schema:
    return pa.schema(fields, metadata={SCHEMA_METADATA_KEY: name.encode()})


def tokenized_schema(num_image_tokens: int = 1024) -> pa.Schema:
    """Token ids and raw MAGVIT codes (not offset into any vocabulary: the trainer applies the
    TokenLayout). `num_image_tokens` is (resolution / 16) ** 2: 1024 at 512 px."""
    codes = pa.list_(pa.int32(), num_image_tokens)
    return _named(
        "tokenized/1",
        [
            pa.field("sample_id", pa.string(), nullable=False),
            pa.field("task", pa.string(), nullable=False),
            pa.field("instruction_ids", pa.list_(pa.int32()), nullable=False),
            pa.field("reasoning_ids", pa.list_(pa.int32()), nullable=False),
            pa.field("input_image_codes", codes),  # null for generate
            pa.field("output_image_codes", codes, nullable=False),
            pa.field("grid_h", pa.int32(), nullable=False),
            pa.field("grid_w", pa.int32(), nullable=False),
            pa.field("instruction_len", pa.int32(), nullable=False),
            pa.field("reasoning_len", pa.int32(), nullable=False),
            # The judge's scores when the version was tokenized from a scored one, else null: metadata
            # for trainers that weight or select by them. Added after the first tokenized versions,
            # nullable: readers select the columns they need, and older shards simply lack it.
            pa.field("scores", SCORES),
        ],
    )


RAW = _named("raw/1", _RAW_FIELDS)
ANNOTATED = _named("annotated/1", _RAW_FIELDS + _ANNOTATION_FIELDS)
SCORED = _named("scored/1", _RAW_FIELDS + _ANNOTATION_FIELDS + _SCORE_FIELDS)
TOKENIZED = tokenized_schema(1024)
QUARANTINE = _named("quarantine/1", QUARANTINE_FIELDS)



def schema_name(schema: pa.Schema) -> str | None:
    meta = schema.metadata or {}
    name = meta.get(SCHEMA_METADATA_KEY)
    return name.decode() if name else None


SCHEMAS = {schema_name(s): s for s in (RAW, ANNOTATED, SCORED, TOKENIZED, QUARANTINE)}


def get_schema(name: str, num_image_tokens: int | None = None) -> pa.Schema:
    """Look a schema up by its full name (`raw/1`)."""
    if name == "tokenized/1" and num_image_tokens is not None:
        return tokenized_schema(num_image_tokens)
    if name not in SCHEMAS:
        raise ValueError(f"unknown schema {name!r}; known: {sorted(SCHEMAS)}")
    return SCHEMAS[name]


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Cast `table` to `schema` (column order, types, metadata), failing loudly on a mismatch:
    a missing column or a null in a non-nullable field is a bug upstream, not data to fix."""
    missing = [f.name for f in schema if f.name not in table.column_names]
    if missing:
        raise ValueError(f"table lacks columns {missing} of schema {schema_name(schema)}")
    table = table.select(schema.names)
    for field, column in zip(schema, table.columns):
        if not field.nullable and column.null_count:
            raise ValueError(f"{column.null_count} nulls in non-nullable column {field.name!r}")
    return table.cast(schema)


def sample_id(task: str, instruction: str, input_image: bytes | None, output_image: bytes) -> str:
    """Content hash of a sample: stable across reruns, the key for dedup, resume, joins and diffs.

    Each part is length-prefixed so that no two different samples can serialise alike."""
    h = hashlib.sha256()
    for part in (task.encode(), instruction.encode(), input_image or b"", output_image):
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    h.update(b"\x01" if input_image is not None else b"\x00")
    return h.hexdigest()


# What a tokenized version's manifest records about its text (`pipeline tokenize` per unit, merged
# by the stage counters' rules: max_* keep the larger, task counts add) and a trainer checks.
TEXT_FACTS = ("max_text_id", "max_instruction_len", "max_reasoning_len", "tasks")


def text_facts(table: pa.Table) -> dict:
    """What a trainer checks a version against before its first step, from tokenized rows: the
    largest text id, the longest texts, rows per task. Tokenize records them, so a trainer at 1M
    rows need not scan every id on every rank."""
    ids = [pc.max(pc.list_flatten(table[c])).as_py() for c in ("instruction_ids", "reasoning_ids")]
    return {"max_text_id": max((i for i in ids if i is not None), default=None),
            "max_instruction_len": pc.max(table["instruction_len"]).as_py(),
            "max_reasoning_len": pc.max(table["reasoning_len"]).as_py(),
            "tasks": {r["values"]: r["counts"] for r in pc.value_counts(table["task"]).to_pylist()}}
