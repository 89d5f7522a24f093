import dataclasses

import pyarrow as pa
import pytest

from schemas import (ANNOTATED, MMADA_M, QUARANTINE, RAW, TOKENIZED, Counts, TokenLayout,
                     VersionManifest, conform, get_schema, sample_id, schema_name, tokenized_schema)


def test_schemas_are_named_and_versioned():
    assert [schema_name(s) for s in (RAW, ANNOTATED, TOKENIZED, QUARANTINE)] == [
        "raw/1", "annotated/1", "tokenized/1", "quarantine/1"]
    assert get_schema("raw/1") is RAW
    assert set(RAW.names) < set(ANNOTATED.names)
    with pytest.raises(ValueError, match="unknown schema"):
        get_schema("raw/9")


def test_tokenized_codes_are_fixed_size_lists():
    field = tokenized_schema(256).field("output_image_codes")
    assert field.type == pa.list_(pa.int32(), 256)
    assert TOKENIZED.field("input_image_codes").nullable
    assert not TOKENIZED.field("output_image_codes").nullable


def test_conform_refuses_missing_columns_and_nulls():
    with pytest.raises(ValueError, match="lacks columns"):
        conform(pa.table({"sample_id": ["a"]}), RAW)
    table = pa.table({name: pa.nulls(1, RAW.field(name).type) for name in RAW.names})
    with pytest.raises(ValueError, match="non-nullable"):
        conform(table, RAW)


def test_sample_id_is_a_stable_content_hash():
    a = sample_id("edit", "make it red", b"in", b"out")
    assert a == sample_id("edit", "make it red", b"in", b"out")
    assert len(a) == 64
    others = {sample_id("generate", "make it red", b"in", b"out"), sample_id("edit", "make it blue", b"in", b"out"),
              sample_id("edit", "make it red", b"in2", b"out"), sample_id("edit", "make it red", b"in", b"out2"),
              # part boundaries matter: moving bytes from one field to the next changes the id
              sample_id("edit", "make it re", b"din", b"out"), sample_id("edit", "make it red", None, b"out")}
    assert a not in others and len(others) == 6


def test_token_layout_matches_the_mmada_vocabulary():
    assert MMADA_M.vocab_size == 134656
    assert MMADA_M.image_token(0) == 126464 and MMADA_M.image_token(8191) == 134655
    assert MMADA_M.image_code(126464 + 5) == 5
    assert MMADA_M.mask_id == 126336 and MMADA_M.pad_id == MMADA_M.eos_id == 126081
    assert (MMADA_M.soi_id, MMADA_M.eoi_id) == (126084, 126085)
    assert MMADA_M.task_id("edit") == 126095 and MMADA_M.task_id("generate") == 126088
    assert bool(MMADA_M.is_image_token(126464)) and not bool(MMADA_M.is_image_token(126336))
    with pytest.raises(ValueError):
        MMADA_M.task_id("caption")


@pytest.mark.parametrize("change, message", [
    ({"image_token_offset": 126000}, "must equal text_vocab_size"),
    ({"mask_id": 200000}, "outside the text vocabulary"),
    ({"soi_id": 126085}, "must be distinct"),
    ({"edit_task_id": 126336}, "collides with a structural"),
    ({"generate_task_id": 126095}, "must differ"),
])
def test_token_layout_validation(change, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(MMADA_M, **change)
    assert TokenLayout(edit_task_id=126096).edit_task_id == 126096


def test_manifest_round_trips_through_json():
    m = VersionManifest(dataset="d", version="v", stage="ingest", schema="raw/1", parent=None,
                        created_at="2026-01-01T00:00:00+00:00", counts=Counts(3, 1, 1, 1), shards=[],
                        quarantine_shards=[], lineage={"command": "x"})
    assert VersionManifest.from_json(m.to_json()) == m
    assert m.counts.reconciles() and not Counts(3, 1, 1, 0).reconciles()
