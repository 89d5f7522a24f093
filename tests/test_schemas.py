import dataclasses

import pyarrow as pa
import pytest

from schemas import (
    ANNOTATED,
    MMADA_M,
    QUARANTINE,
    RAW,
    SCORED,
    TOKENIZED,
    Counts,
    TokenLayout,
    VersionManifest,
    conform,
    get_schema,
    sample_id,
    schema_name,
    tokenized_schema,
)


def test_schemas_are_named_and_versioned():
    assert [schema_name(s) for s in (RAW, ANNOTATED, SCORED, TOKENIZED, QUARANTINE)] == [
        "raw/1", "annotated/1", "scored/1", "tokenized/1", "quarantine/1"]
    assert get_schema("raw/1") is RAW
    assert set(RAW.names) < set(ANNOTATED.names) < set(SCORED.names)
    assert ANNOTATED.names == SCORED.names[:len(ANNOTATED.names)]  # a scored row is its annotated row, then scores
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


def test_token_layout_matches_the_published_mmada_vocabulary():
    assert MMADA_M.vocab_size == 134656 and MMADA_M.image_token_offset == MMADA_M.text_vocab_size == 126349
    assert MMADA_M.image_token(0) == 126349 and MMADA_M.image_token(8191) == 134540  # rows 134541.. never used
    assert MMADA_M.image_code(126349 + 5) == 5
    assert MMADA_M.mask_id == 126336 and MMADA_M.pad_id == MMADA_M.eos_id == 126081
    assert (MMADA_M.soi_id, MMADA_M.eoi_id, MMADA_M.interleave_id, MMADA_M.t2i_id) == (126084, 126085, 126095, 126088)
    assert bool(MMADA_M.is_image_token(126349)) and not bool(MMADA_M.is_image_token(126336))
    assert not bool(MMADA_M.is_image_token(134541))


def test_token_layout_from_tokenizers(llada_tokenizer_dir, tmp_path):
    from jobs.tiny_models import build_published_llada_tokenizer
    from pipeline.tokenize import load_text_tokenizer

    published = load_text_tokenizer(str(build_published_llada_tokenizer(tmp_path / "llada")))
    assert len(published) == 126349
    assert TokenLayout.from_tokenizer(published, embedding_size=134656) == MMADA_M  # offset from the tokenizer
    with pytest.raises(ValueError, match="do not fit a vocabulary of 134000"):
        TokenLayout.from_tokenizer(published, embedding_size=134000)
    small = load_text_tokenizer(str(llada_tokenizer_dir))  # names its special tokens: found by name
    layout = TokenLayout.from_tokenizer(small, embedding_size=len(small) + 8192)
    vocab = small.get_vocab()
    assert layout.image_token_offset == len(small) and layout.vocab_size == len(small) + 8192
    assert (layout.mask_id, layout.soi_id, layout.interleave_id) == (
        vocab["<|mdm_mask|>"], vocab["<|soi|>"], vocab["<|interleave|>"])
    assert TokenLayout.from_dict(layout.to_dict()) == layout


@pytest.mark.parametrize("change, message", [
    ({"image_token_offset": 126500}, "do not fit a vocabulary"),
    ({"mask_id": 200000}, "outside the text vocabulary"),
    ({"mask_id": 126349}, "outside the text vocabulary"),  # the first image code is not text
    ({"soi_id": 126085}, "must be distinct"),
    ({"t2i_id": 126336}, "collides with a structural"),
])
def test_token_layout_validation(change, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(MMADA_M, **change)
    assert TokenLayout(t2it_id=126097).t2it_id == 126097


def test_sequence_config_is_one_length_contract():
    from schemas import SequenceConfig

    assert (SequenceConfig().max_instruction_tokens, SequenceConfig().max_reasoning_tokens) == (254, 254)
    with pytest.raises(ValueError, match="one text length L"):
        SequenceConfig(instruction_len=128, reasoning_len=256)
    assert SequenceConfig(preset="paraforge", instruction_len=128, reasoning_len=256).max_reasoning_tokens == 254
    with pytest.raises(ValueError, match="unknown sequence preset"):
        SequenceConfig(preset="mmada")


def test_manifest_round_trips_through_json():
    m = VersionManifest(dataset="d", version="v", stage="ingest", schema="raw/1", parent=None,
                        created_at="2026-01-01T00:00:00+00:00", counts=Counts(3, 1, 1, 1), shards=[],
                        quarantine_shards=[], lineage={"command": "x"})
    assert VersionManifest.from_json(m.to_json()) == m
    assert m.counts.reconciles() and not Counts(3, 1, 1, 0).reconciles()
