"""`pipeline tokenize`: MAGVIT-v2 codes and LLaDA-style text ids into memory-mappable Arrow shards."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pytest
import torch
from transformers import AutoTokenizer

import pipeline.annotate
import pipeline.tokenize
from annotators import AnnotatorConfig, BackendConfig
from annotators.openai_backend import OpenAIConfig
from pipeline.annotate import AnnotateConfig
from pipeline.preview import preview
from pipeline.registry import DatasetRegistry
from pipeline.run import run_stage
from pipeline.tokenize import TokenizeConfig
from schemas import SCORES, SequenceConfig
from tests.helpers import ingest, kill_when, run_trainer, sft_args
from trainer.model_io import export, load_model, resolve
from trainer.rundir import RunDir


@pytest.fixture
def annotated(ray_local, demo_dir, fake_server, registry_root):
    raw = ingest([demo_dir / "data.jsonl"], registry_root, dataset="demo")
    fake = BackendConfig(kind="openai", model="fake", openai=OpenAIConfig(base_url=f"{fake_server}/v1"))
    m = run_stage(pipeline.annotate.plan, AnnotateConfig(dataset="demo", registry=registry_root,
                                                         annotator=AnnotatorConfig(backend=fake)), progress=False)
    assert m.counts.output == raw.counts.output == 24
    return m


def tokenize(registry_root, magvit_dir, tokenizer_dir, **kw):
    kw = {"resolution": 64, "batch_size": 8, **kw}
    cfg = TokenizeConfig(dataset="demo", registry=registry_root, image_tokenizer=str(magvit_dir),
                         text_tokenizer=str(tokenizer_dir), **kw)
    return run_stage(pipeline.tokenize.plan, cfg, progress=False)


def test_shards_have_the_contract_types(annotated, magvit_dir, llada_tokenizer_dir, registry_root):
    m = tokenize(registry_root, magvit_dir, llada_tokenizer_dir)
    assert (m.counts.input, m.counts.output, m.counts.quarantined) == (24, 24, 0)
    assert m.schema == "tokenized/1" and m.parent == annotated.ref
    lineage = m.lineage["tokenize"]
    assert lineage["resolution"] == 64 and len(lineage["image_tokenizer_sha256"]) == 64
    assert lineage["text_tokenizer"] == str(llada_tokenizer_dir) and len(lineage["text_tokenizer_sha256"]) == 64
    # what a trainer needs to read the version: the vocabulary it was made for, the length contract,
    # and the black image a generation row stands on in the mmada-parallel-m preset
    assert lineage["text_tokenizer_size"] == len(AutoTokenizer.from_pretrained(str(llada_tokenizer_dir)))
    assert lineage["image_codebook_size"] == 8192
    assert lineage["sequence"] == {"preset": "mmada-parallel-m", "instruction_len": 256, "reasoning_len": 256}
    assert lineage["max_reasoning_tokens"] == 254
    from pipeline.image_tokenizer import MagvitV2
    from pipeline.tokenize import encode_blank_image
    assert lineage["blank_image_codes"] == encode_blank_image(MagvitV2.from_pretrained(str(magvit_dir)), 64)
    assert len(lineage["blank_image_codes"]) == 16
    # what reads the version back loads the recorded models, checked: another one is refused by name
    from jobs.world_models import SHIPPED_MAGVIT, build_world_tokenizer
    from pipeline.hub import load_recorded_tokenizer

    assert len(load_recorded_tokenizer(lineage)) == lineage["text_tokenizer_size"]
    other = build_world_tokenizer(Path(registry_root).parent / "other-tokenizer")
    with pytest.raises(ValueError, match=f"{other} is not the one the version was tokenized with"):
        load_recorded_tokenizer(lineage, str(other))
    MagvitV2.for_version(lineage)
    with pytest.raises(ValueError, match="world-magvit is not the one the version was tokenized with"):
        MagvitV2.for_version(lineage, str(SHIPPED_MAGVIT))

    registry = DatasetRegistry(registry_root)
    [path] = registry.shard_paths(m)
    assert path.endswith(".arrow")
    table = pa.ipc.open_file(pa.memory_map(path)).read_all()  # plain pyarrow, memory-mapped
    expected = {"sample_id": pa.string(), "task": pa.string(), "instruction_ids": pa.list_(pa.int32()),
                "reasoning_ids": pa.list_(pa.int32()), "input_image_codes": pa.list_(pa.int32(), 16),
                "output_image_codes": pa.list_(pa.int32(), 16), "grid_h": pa.int32(), "grid_w": pa.int32(),
                "instruction_len": pa.int32(), "reasoning_len": pa.int32(), "scores": SCORES}
    assert {f.name: f.type for f in table.schema} == expected
    assert table["scores"].null_count == table.num_rows  # an annotated input has no judge scores

    text = AutoTokenizer.from_pretrained(str(llada_tokenizer_dir))
    sources = {r["sample_id"]: r for r in registry.read_table(annotated).to_pylist()}
    for row in table.to_pylist():
        src = sources[row["sample_id"]]
        assert row["instruction_ids"] == text(src["instruction"], add_special_tokens=False)["input_ids"]
        assert text.bos_token_id not in row["reasoning_ids"] and text.eos_token_id not in row["reasoning_ids"]
        assert row["reasoning_len"] == len(row["reasoning_ids"]) > 0
        assert (row["grid_h"], row["grid_w"]) == (4, 4)
        assert all(0 <= c < 8192 for c in row["output_image_codes"])
        assert (row["input_image_codes"] is None) == (row["task"] == "generate")
    rows = table.to_pylist()  # the facts a trainer checks without scanning the version
    assert m.stats["max_reasoning_len"] == max(r["reasoning_len"] for r in rows)
    assert m.stats["max_text_id"] == max(max(r["instruction_ids"] + r["reasoning_ids"]) for r in rows)
    assert m.stats["tasks"] == {t: sum(r["task"] == t for r in rows) for t in ("edit", "generate")}

    pictures = preview(m.ref, Path(registry_root) / "preview", n=3, registry=registry_root)
    assert len(pictures) >= 3 and all(p.stat().st_size > 0 for p in pictures)


def test_overflow_is_quarantined_or_truncated(annotated, magvit_dir, llada_tokenizer_dir, registry_root):
    short = SequenceConfig(preset="paraforge", reasoning_len=10)  # at most 8 reasoning tokens (bos + 8 + eos)
    m = tokenize(registry_root, magvit_dir, llada_tokenizer_dir, sequence=short, output="q")
    assert (m.counts.output, m.counts.quarantined) == (0, 24)
    assert m.stats["quarantine_reasons"] == {"reasoning_too_long": 24}
    t = tokenize(registry_root, magvit_dir, llada_tokenizer_dir, sequence=short, overflow="truncate",
                 output="t")
    assert t.counts.output == 24
    rows = DatasetRegistry(registry_root).read_table(t).to_pylist()
    assert {r["reasoning_len"] for r in rows} == {8}


def test_killed_tokenize_resumes(annotated, magvit_dir, llada_tokenizer_dir, registry_root, ray_local, tmp_path):
    args = ["tokenize", "demo", "--image-tokenizer", str(magvit_dir), "--text-tokenizer", str(llada_tokenizer_dir),
            "--resolution", "64", "--set", "batch_size=2", "--no-progress", "--set", "unit_rows=4"]
    bin_ = Path(sys.executable).parent / "pipeline"
    env = {**os.environ, "RAY_ADDRESS": ray_local}
    clean_root = str(tmp_path / "clean")
    shutil.copytree(registry_root, clean_root)  # the same annotated version, for an uninterrupted run
    work = Path(registry_root) / "demo" / "_work"
    kill_when([str(bin_), *args, "--registry", registry_root],
              lambda: len(list(work.glob("tokenize-*/units/*.json"))) >= 2, 300, env)
    done = len(list(work.glob("tokenize-*/units/*.json")))
    assert 2 <= done < 6
    rerun = subprocess.run([str(bin_), *args, "--registry", registry_root], env=env, capture_output=True,
                           text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{done} of 6 units already done" in rerun.stdout
    clean = tokenize(clean_root, magvit_dir, llada_tokenizer_dir, batch_size=2, unit_rows=4)
    assert rerun.stdout.split()[-1] == clean.version


def test_from_ingest_to_a_resumed_sft_run_on_an_object_store(ray_local, demo_dir, fake_server, s3_bucket, magvit_dir,
                                                             llada_tokenizer_dir, tmp_path, monkeypatch):
    """An `s3://` registry and an `s3://` run folder, with nothing else shared: Ray workers read
    their units from and write shards and markers to the registry; SFT reads it, checkpoints to the
    run folder and resumes from it on an empty cache; export, load and `pipeline report` read both."""
    root = f"{s3_bucket}/registry"
    raw = ingest([demo_dir / "data.jsonl"], root, dataset="demo", unit_rows=10)
    fake = BackendConfig(kind="openai", model="fake", openai=OpenAIConfig(base_url=f"{fake_server}/v1"))
    annotated = run_stage(pipeline.annotate.plan, AnnotateConfig(
        dataset="demo", registry=root, unit_rows=10, annotator=AnnotatorConfig(backend=fake)), progress=False)
    m = tokenize(root, magvit_dir, llada_tokenizer_dir, unit_rows=10)
    assert raw.counts.output == annotated.counts.output == m.counts.output == 24 and m.stats["resumed_units"] == 0
    registry = DatasetRegistry(root)
    assert registry.resolve("demo").ref == m.ref and len(m.shards) == 3  # one shard per unit of 10 rows
    assert registry.read_table(m)["sample_id"].to_pylist() == registry.read_table(raw)["sample_id"].to_pylist()
    assert tokenize(root, magvit_dir, llada_tokenizer_dir, unit_rows=10).version == m.version  # resumed: same

    # The same registry feeds the trainer, whose run folder is on the object store too: two steps, then
    # a run on a "new machine" (an empty cache) that resumes from the s3:// checkpoint to step 3.
    run = f"{s3_bucket}/runs/sft"
    for steps, cache in ((2, tmp_path / "cache-a"), (3, tmp_path / "cache-b")):
        run_trainer(sft_args(root, m.ref, run, steps=steps, save_every=2), env={"PARAFORGE_CACHE": str(cache)})
        # shards reach the trainer through the local cache, named by their hash
        assert sorted(p.name for p in (cache / "shards").iterdir()) == sorted(f"{s.sha256}.arrow" for s in m.shards)
    fs, base = pafs.FileSystem.from_uri(run)
    with fs.open_input_stream(f"{base}/metrics.jsonl") as f:
        steps = [json.loads(line)["step"] for line in f.read().decode().splitlines()]
    assert steps == [1, 2, 3]  # resumed at 3, not restarted at 1
    assert RunDir(run).checkpoint_tags() and sorted(RunDir(run).checkpoint_tags()) == ["step-2", "step-3"]
    mirror = next((tmp_path / "cache-b" / "runs").iterdir()) / "checkpoints"
    assert sorted(p.name for p in mirror.iterdir() if p.is_dir()) == ["step-3"]  # one local copy, the newest

    monkeypatch.setenv("PARAFORGE_CACHE", str(tmp_path / "cache-c"))  # this process: a third machine
    exported = export(run, f"{s3_bucket}/models/sft-step3")  # a run on s3 -> a model folder on s3
    trained, loaded = load_model(run), load_model(exported)
    assert all(torch.equal(a, b) for a, b in zip(trained.state_dict().values(), loaded.state_dict().values()))
    # a cached copy is the run's only while its done marker matches the run's: a stale one (from a
    # deleted run of the same URI, here faked) is fetched again, never trusted by its name
    local = resolve(run) / "checkpoints" / "step-3"
    (local / "done").write_bytes(b"from an older run")
    (local / "model.safetensors").unlink()
    assert (resolve(run) / "checkpoints" / "step-3" / "model.safetensors").exists()

    out = tmp_path / "report.html"
    done = subprocess.run([str(Path(sys.executable).parent / "pipeline"), "report", m.ref, "--registry", root, "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert m.version in out.read_text() and raw.version in out.read_text()


def test_a_hub_id_is_recorded_with_its_cached_revision(tmp_path, monkeypatch, llada_tokenizer_dir):
    """For a tokenizer given by hub id the lineage records the cached snapshot's commit beside the
    id (offline), since `main` moves; a local folder or an id not in the cache has none."""
    from pipeline.hub import hub_revision, portable_name

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--paraforge--tiny-tokenizer"
    shutil.copytree(llada_tokenizer_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    assert hub_revision("paraforge/tiny-tokenizer") == commit
    assert portable_name("paraforge/tiny-tokenizer") == "paraforge/tiny-tokenizer"
    assert hub_revision(str(llada_tokenizer_dir)) is None and hub_revision("paraforge/not-cached") is None
