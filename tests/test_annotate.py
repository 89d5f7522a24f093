"""`pipeline annotate` against a scripted OpenAI-compatible server: faults, validation, resume."""

import dataclasses
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

import pipeline.annotate
from annotators import AnnotatorConfig, BackendConfig, ValidatorConfig
from annotators.openai_backend import OpenAIConfig
from pipeline.annotate import AnnotateConfig, report
from pipeline.registry import DatasetRegistry
from pipeline.run import run_stage
from tests.helpers import ingest, kill_when


def server_log(url: str) -> list[dict]:
    return json.load(urllib.request.urlopen(f"{url}/stats"))["log"]


FAULTS = [  # (marker, accepted?, attempts, final reason)
    ("", True, 1, None),
    ("[fault:500x2]", True, 1, None),
    ("[fault:429x1]", True, 1, None),
    ("[fault:timeoutx1]", True, 1, None),
    ("[fault:malformedx1]", True, 2, None),
    ("[fault:malformed]", False, 3, "malformed_response"),
    ("[fault:emptyx1]", True, 2, None),
    ("[fault:empty]", False, 3, "empty_trace"),
    ("[fault:leakx1]", True, 2, None),
    ("[fault:leak]", False, 3, "target_leak"),
    ("[fault:refusal]", False, 3, "refusal"),
    ("[fault:short]", False, 3, "too_short"),
    ("[fault:length]", False, 3, "truncated"),
    ("[fault:500]", False, 3, "server_error"),
    ("[fault:400]", False, 1, "client_error"),  # refused: a new seed cannot fix it, so no second attempt
]


@pytest.fixture
def fault_dataset(ray_local, demo_dir, registry_root, tmp_path):
    lines = []
    for i, (marker, *_rest) in enumerate(FAULTS):
        lines.append(json.dumps({"task": "edit", "instruction": f"Sample {i}: make the circle blue. {marker}",
                                 "input_image": str(demo_dir / "images/demo-00000_input.png"),
                                 "output_image": str(demo_dir / "images/demo-00000_output.png")}))
    (demo_dir / f"faults-{tmp_path.name}.jsonl").write_text("\n".join(lines))
    m = ingest([demo_dir / f"faults-{tmp_path.name}.jsonl"], registry_root, dataset="faults")
    assert m.counts.output == len(FAULTS)
    return m


def annotate(dataset, registry_root, base_url, **kw):
    return run_stage(pipeline.annotate.plan, annotate_config(dataset, registry_root, base_url, **kw), progress=False)


def annotate_config(dataset, registry_root, base_url, **kw):
    """AnnotateConfig against the scripted server; `kw` sets AnnotateConfig's fields, or
    AnnotatorConfig's (validators, max_attempts, image_max_pixels, ...), or the model."""
    server = OpenAIConfig(base_url=f"{base_url}/v1", timeout_s=1.0, max_retries=2, backoff_base_s=0.01,
                          backoff_max_s=0.05)
    backend = BackendConfig(kind="openai", model=kw.pop("model", "fake"), openai=server)
    mine = {f.name for f in dataclasses.fields(AnnotatorConfig)}
    annotator = AnnotatorConfig(backend=backend, **{k: kw.pop(k) for k in list(kw) if k in mine})
    return AnnotateConfig(dataset=dataset, registry=registry_root, annotator=annotator, **kw)


def test_faults_are_retried_validated_and_accounted(fault_dataset, fake_server, registry_root, monkeypatch, capsys):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-sentinel-123")
    m = annotate("faults", registry_root, fake_server, batch_size=32)
    print(report(m))
    accepted = sum(1 for f in FAULTS if f[1])
    assert (m.counts.input, m.counts.output, m.counts.quarantined) == (len(FAULTS), accepted, len(FAULTS) - accepted)
    assert m.counts.reconciles() and m.parent == fault_dataset.ref and m.schema == "annotated/1"
    assert m.stats["attempts"] == {"1": 5, "2": 3, "3": 7}
    assert m.stats["quarantine_reasons"] == {r: 1 for *_x, r in FAULTS if r}
    # the backend's transport errors reach the version: two 500s, then 3 attempts x 3 tries of a 500; one 429
    errors = m.stats["transport_errors"]
    assert (errors["5xx"], errors["429"]) == (2 + 9, 1) and errors["timeout"] >= 1 and "transport errors" in report(m)
    registry = DatasetRegistry(registry_root)
    rows = {r["instruction"].split(":")[0]: r for r in registry.read_table(m).to_pylist()}
    for i, (_marker, ok, attempts, _) in enumerate(FAULTS):
        if ok:
            row = rows[f"Sample {i}"]
            assert row["attempts"] == attempts and row["reasoning"].startswith("The request is to")
            assert row["prompt_id"] == "edit-v1" and len(row["prompt_hash"]) == 64
            assert json.loads(row["verdicts"])["leakage"] == "pass"
    quarantine = {r["sample_id"]: r for r in registry.read_table(m, quarantine=True).to_pylist()}
    assert all(r["stage"] == "annotate" for r in quarantine.values())
    by_reason = {r["reason"]: r["message"] for r in quarantine.values()}
    assert by_reason["client_error"] == ("attempt 1: client_error | last error: client_error: 400 Error code: 400 - "
                                         "injected: this request is invalid")
    assert by_reason["server_error"].count("attempt") == 3 and "(after 2 retries)" in by_reason["server_error"]

    log = server_log(fake_server)
    per_key = {}
    for entry in log:
        per_key.setdefault(entry["key"].split(":")[0], []).append(entry)
    assert len(per_key["Sample 1"]) == 3  # two 500s, then an answer
    assert len(per_key["Sample 13"]) == 9  # 3 attempts x (1 try + 2 retries), all 500
    first, second = per_key["Sample 2"][:2]
    assert second["t"] - first["t"] >= 0.3  # Retry-After honoured
    assert len({e["seed"] for e in per_key["Sample 9"]}) == 3  # each attempt a new seed
    assert {e["auth"] for e in log} == {"Bearer sk-test-sentinel-123"}  # the key reached the workers...
    stored = (Path(registry_root) / "faults" / "versions" / m.version / "manifest.json").read_text()
    assert "sk-test-sentinel" not in stored and "sk-test-sentinel" not in capsys.readouterr().out  # ...and no record
    assert files_holding(b"sk-test-sentinel", ray_session_dir()) == []  # nor any file of Ray's: logs, job tables

    # The 500-forever row outlasted every retry: published as quarantined, but its unit is not taken
    # as done, so the same command after the outage asks the server again.
    before = len(per_key["Sample 13"])
    again = annotate("faults", registry_root, fake_server, batch_size=32)
    assert again.stats["resumed_units"] == 0  # redone, not resumed
    assert len([e for e in server_log(fake_server) if e["key"].startswith("Sample 13")]) == 2 * before


def ray_session_dir() -> Path:
    import ray

    return Path(ray._private.worker._global_node.get_session_dir_path())


def files_holding(secret: bytes, folder: Path) -> list[str]:
    hits = []
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink() and path.stat().st_size < 200 * 1024 * 1024:
            try:
                if secret in path.read_bytes():
                    hits.append(str(path))
            except OSError:  # sockets, files Ray is rotating
                pass
    return hits


def test_validator_thresholds_are_configurable(fault_dataset, fake_server, registry_root):
    lenient = ValidatorConfig(min_words=1, disabled=["leakage"])
    m = annotate("faults", registry_root, fake_server, validators=lenient, max_attempts=1, output="lenient")
    assert "too_short" not in m.stats["quarantine_reasons"]
    assert "target_leak" not in m.stats["quarantine_reasons"]


def test_killed_annotate_resumes_without_redoing_chunks(ray_local, demo_dir, fake_server, registry_root, tmp_path):
    raw = ingest([demo_dir / "data.jsonl"], registry_root, dataset="demo")
    clean_root = str(tmp_path / "clean")
    ingest([demo_dir / "data.jsonl"], clean_root, dataset="demo")
    args = ["annotate", "demo", "--backend", "openai", "--model", "fake", "--base-url", f"{fake_server}/v1",
            "--no-progress", "--set", "annotator.backend.openai.concurrency=1", "--set", "unit_rows=4",
            "--set", "batch_size=2"]
    bin_ = Path(sys.executable).parent / "pipeline"
    env = {**os.environ, "RAY_ADDRESS": ray_local}
    clean = subprocess.run([str(bin_), *args, "--registry", clean_root], env=env, capture_output=True,
                           text=True, timeout=300)
    assert clean.returncode == 0, clean.stderr
    n_clean = len(server_log(fake_server))

    chunks = Path(registry_root) / "demo" / "_work"
    kill_when([str(bin_), *args, "--registry", registry_root], lambda: len(list(chunks.glob("annotate-*/units/*.json"))) >= 2,
              120, env)
    done = len(list(chunks.glob("annotate-*/units/*.json")))
    assert 2 <= done < 6
    assert DatasetRegistry(registry_root).versions("demo")[-1].version == raw.version  # nothing published

    requests_before = len(server_log(fake_server))
    rerun = subprocess.run([str(bin_), *args, "--registry", registry_root], env=env, capture_output=True,
                           text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{done} of 6 units already done" in rerun.stdout
    assert rerun.stdout.split()[-1] == clean.stdout.split()[-1]  # the same version as an uninterrupted run
    redone = len(server_log(fake_server)) - requests_before
    assert redone == 24 - 4 * done  # only the missing chunks went to the server again
    assert n_clean == 24


def test_images_are_fitted_to_the_budget_and_long_prompts_never_sent(ray_local, fake_server, tmp_path, registry_root):
    from PIL import Image

    src = tmp_path / "big"
    src.mkdir()
    rng = __import__("numpy").random.default_rng(0)
    lines = []
    for i, size in enumerate([(2400, 1600), (1600, 2400), (64, 64)]):
        for side in ("in", "out"):
            Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype="uint8")).save(src / f"{side}{i}.jpg")
        lines.append(json.dumps({"task": "edit", "instruction": f"Sample {i}: make it brighter",
                                 "input_image": f"in{i}.jpg", "output_image": f"out{i}.jpg"}))
    (src / "data.jsonl").write_text("\n".join(lines))
    raw = ingest([src / "data.jsonl"], registry_root, dataset="big")
    assert raw.counts.output == 3

    fitted = annotate("big", registry_root, fake_server, image_max_pixels=200_000, output="fitted")
    assert fitted.counts.output == 3 and fitted.lineage["annotate"]["image_max_pixels"] == 200_000
    sent = {e["key"].split(":")[0]: e["images"] for e in server_log(fake_server)}
    assert sent["Sample 0"] == [[547, 365]] * 2 and sent["Sample 1"] == [[365, 547]] * 2  # aspect kept
    assert sent["Sample 2"] == [[64, 64]] * 2  # small images go as they are
    rows = DatasetRegistry(registry_root).read_table(fitted).to_pylist()
    assert sorted(r["input_width"] for r in rows) == [64, 1600, 2400]  # the stored images are untouched

    requests = len(server_log(fake_server))
    short = annotate("big", registry_root, fake_server, max_model_len=1200, output="short")
    assert (short.counts.output, short.counts.quarantined) == (1, 2)
    assert short.stats["quarantine_reasons"] == {"prompt_too_long": 2} and short.stats["attempts"]["0"] == 2
    assert len(server_log(fake_server)) == requests + 1  # only the small one was sent
    messages = DatasetRegistry(registry_root).read_table(short, quarantine=True)["message"].to_pylist()
    assert all("> max_model_len 1200" in m for m in messages)


def test_retry_after_is_parsed_strictly_and_capped():
    import httpx
    import openai

    from annotators.openai_backend import _retry_after

    def wait(value):
        response = httpx.Response(429, headers={} if value is None else {"Retry-After": value},
                                  request=httpx.Request("POST", "http://x/v1/chat/completions"))
        return _retry_after(openai.RateLimitError("slow down", response=response, body=None), cap_s=60.0)

    assert wait("2.5") == 2.5 and wait("0") == 0.0 and wait("-3") == 0.0
    assert wait("86400") == 60.0  # a day's wait, capped
    assert wait("inf") is None and wait("nan") is None and wait("soon") is None and wait(None) is None
    assert wait("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # an HTTP date in the past
    assert wait("Wed, 21 Oct 2015 07:28:00") is None  # no zone: not a valid HTTP date


def test_a_trickling_answer_and_junk_retry_after_stay_bounded(fake_server):
    """A server that sends its body a byte at a time gets one deadline for the whole request, and
    Retry-After headers of `inf`, `soon` or a day never stall the run."""
    from annotators.annotator import Request, SamplingConfig, generate
    from annotators.openai_backend import OpenAIBackend

    cfg = OpenAIConfig(base_url=f"{fake_server}/v1", timeout_s=1.0, max_retries=1, backoff_base_s=0.01,
                       backoff_max_s=0.05, retry_after_max_s=0.5)
    requests = [Request([{"role": "user", "content": f'instruction: "{i} {m}"'}], 0)
                for i, m in enumerate(["[fault:tricklex1]", "[fault:retryinfx1]", "[fault:retrysoonx1]",
                                       "[fault:retrylongx1]"])]
    completions = generate(OpenAIBackend("fake", cfg), requests, SamplingConfig())
    assert all(c.error is None and c.text for c in completions), completions
    log = server_log(fake_server)
    # one retry each: the trickle (3 s, the server's hang_s) was cut at the 1 s deadline, not awaited
    assert [sum(e["key"].startswith(f"{i} ") for e in log) for i in range(4)] == [2, 2, 2, 2]


@pytest.fixture
def keyed_server():
    """The scripted server demanding one API key."""
    from tests.helpers import free_port, wait_http

    port = free_port()
    server = Path(__file__).parent / "fake_openai_server.py"
    proc = subprocess.Popen([sys.executable, str(server), "--port", str(port), "--api-key", "sk-right"])
    wait_http(f"http://127.0.0.1:{port}/health", 30, proc)
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait()


def test_job_errors_stop_the_run_and_publish_nothing(fault_dataset, keyed_server, registry_root, monkeypatch):
    """A rejected key, a model the server does not serve and an unreachable server are the run's
    errors, not 15 rows' errors: one clear error before any work, and no version."""
    from annotators.openai_backend import BackendUnavailable
    from tests.helpers import free_port

    registry = DatasetRegistry(registry_root)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong")
    with pytest.raises(BackendUnavailable, match="refused the API key"):
        annotate("faults", registry_root, keyed_server, output="keyed")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-right")
    with pytest.raises(BackendUnavailable, match="does not serve model 'gpt-7'"):
        annotate("faults", registry_root, keyed_server, output="keyed", model="gpt-7")
    with pytest.raises(BackendUnavailable, match="cannot reach"):
        annotate("faults", registry_root, f"http://127.0.0.1:{free_port()}", output="keyed")
    assert registry.versions("keyed") == []
    m = annotate("faults", registry_root, keyed_server, output="keyed", max_attempts=1)
    assert m.counts.input == len(FAULTS) and registry.versions("keyed") != []


def test_a_corrupt_input_shard_stops_the_stage_before_any_request(fault_dataset, fake_server, registry_root):
    """The stage hashes the shards of the version it reads before any unit runs: a flipped byte stops
    the job naming the shard, and no request is made on rows that would be wrong in silence."""
    registry = DatasetRegistry(registry_root)
    shard = Path(registry.shard_paths(fault_dataset)[0])
    data = bytearray(shard.read_bytes())
    requests_before = len(server_log(fake_server))
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    try:
        with pytest.raises(ValueError, match="shards fail their hash: .*the shard is corrupt"):
            annotate("faults", registry_root, fake_server, output="corrupt-input")
    finally:
        data[len(data) // 2] ^= 0xFF
        shard.write_bytes(bytes(data))
    assert len(server_log(fake_server)) == requests_before and registry.versions("corrupt-input") == []
    m = annotate("faults", registry_root, fake_server, output="corrupt-input", max_attempts=1)
    assert m.counts.input == len(FAULTS)
    work = Path(registry.work_dir("corrupt-input", m.lineage["annotate"]["run_key"]))
    assert (work / "input-verified.json").exists()  # a resumed run does not hash the input again


def test_device_cuda_waits_for_gpus_then_stops_instead_of_running_on_cpus(fault_dataset, registry_root):
    """A cluster still scaling up from zero GPUs: `device=cuda` waits `gpu_wait_s` for them, then stops
    with a clear error and publishes nothing, never a 72B annotator on CPUs."""
    import time

    on_gpu = AnnotatorConfig(backend=BackendConfig(kind="transformers", model="unused", device="cuda"))
    config = AnnotateConfig(dataset="faults", registry=registry_root, gpu_wait_s=1.0, output="on-gpu", annotator=on_gpu)
    started = time.monotonic()
    with pytest.raises(ValueError, match="device=cuda, but no GPU joined the Ray cluster within 1 s"):
        run_stage(pipeline.annotate.plan, config, progress=False)
    assert 1.0 <= time.monotonic() - started < 30 and DatasetRegistry(registry_root).versions("on-gpu") == []


def test_gc_in_a_loop_during_an_annotate_on_s3_takes_nothing_it_publishes(ray_local, demo_dir, fake_server,
                                                                          s3_bucket, capsys):
    """`versions gc` with no grace period, run over and over while an annotate writes its units to
    an S3 registry: the run's lease (a heartbeat file in its work folder) spares every shard it
    writes, so the version it publishes verifies; once it has published, gc takes the rest.
    (Without the lease, gc deletes the units' shards before their version names them, and publish
    refuses: measured when the lease was disabled.)"""
    import threading

    root = f"{s3_bucket}/reg"
    raw = ingest([demo_dir / "data.jsonl"], root, dataset="demo")
    registry = DatasetRegistry(root)
    stop, passes, spared = threading.Event(), [], []

    def collect() -> None:
        while not stop.is_set():
            found = registry.collect_garbage("demo", older_than_s=0)
            passes.append(found)
            spared.append(found["live_runs"])

    thread = threading.Thread(target=collect)
    thread.start()
    try:
        m = annotate("demo", root, fake_server, unit_rows=4, batch_size=2)
    finally:
        stop.set()
        thread.join()
    print(f"gc passes during the run: {len(passes)}, with a live run: {sum(spared)}; "
          f"deleted {sum(p['shards'] for p in passes)} shards, {sum(p['work_files'] for p in passes)} work files")
    assert m.parent == raw.ref and m.counts.output > 0
    assert sum(spared) >= 3  # gc ran while the lease was live, more than once
    assert registry.verify(m) == [] and registry.verify(raw) == []
    after = registry.collect_garbage("demo", older_than_s=0)
    assert after["live_runs"] == 0 and registry.verify(m) == []
