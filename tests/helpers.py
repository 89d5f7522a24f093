"""What several test files share: servers on 127.0.0.1, processes killed mid-run, the CLIs run as a
user runs them, a small ingest, raw rows. Test files import from here, never from each other."""

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa

SERVER = Path(__file__).parent / "fake_openai_server.py"
BIN = Path(sys.executable).parent  # the venv's console scripts: `pipeline`, `trainer`


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, seconds: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(url)


def kill_when(cmd: list[str], ready: Callable[[], bool], seconds: float, env: dict | None = None,
              settle_s: float = 3.0) -> None:
    """Start `cmd` and SIGKILL it as soon as `ready()` holds; fail if it ends on its own first. Then
    wait a moment: workers write their own output, and Ray stops a dead driver's workers shortly
    after it dies, so what is on disk settles only then."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + seconds
    while not ready():
        assert proc.poll() is None, f"{' '.join(cmd[:2])} finished before it could be killed"
        assert time.time() < deadline, f"gave up waiting to kill {' '.join(cmd[:2])}"
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    time.sleep(settle_s)


def cli(*args, ray_address=None, check=True):
    """`pipeline ARGS` as a user runs it (a fresh process, its own Ray connection)."""
    env = {**os.environ, "RAY_ADDRESS": ray_address or ""}
    result = subprocess.run([str(BIN / "pipeline"), *map(str, args)], capture_output=True, text=True,
                            env=env, timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f"exit {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


def ingest(sources, registry_root, **kw):
    """`pipeline ingest` in process, quietly; dataset "d" unless named."""
    import pipeline.ingest
    from pipeline.ingest import IngestConfig
    from pipeline.run import run_stage

    config = IngestConfig(sources=[str(s) for s in sources], dataset=kw.pop("dataset", "d"), registry=registry_root, **kw)
    return run_stage(pipeline.ingest.plan, config, progress=False)


def raw_rows(ids, category="c"):
    """A raw/1 table of tiny generate rows named by `ids`."""
    n = len(ids)
    return pa.table({
        "sample_id": ids, "task": ["generate"] * n, "instruction": [f"draw {i}" for i in ids],
        "input_image": pa.nulls(n, pa.binary()), "output_image": [i.encode() * 100 for i in ids],
        "input_width": pa.nulls(n, pa.int32()), "input_height": pa.nulls(n, pa.int32()),
        "output_width": [64] * n, "output_height": [64] * n, "source": ["s"] * n,
        "source_ref": [f"s:{i}" for i in ids], "category": [category] * n, "meta": [None] * n})


def sft_settings(registry, ref, out, **overrides) -> list[str]:
    """key=value settings of a tiny SFT run on a tokenized version."""
    values = {"dataset": ref, "registry": registry, "init": "tiny", "out_dir": out,
              "bf16": "false", "micro_batch_size": 2, "sequence.instruction_len": 256,
              "sequence.reasoning_len": 256, "optim.warmup_steps": 2, "optim.lr": 1e-3, **overrides}
    return [f"{k}={v}" for k, v in values.items()]


def sft_args(registry, ref, out, legacy=False, **overrides):
    pairs = sft_settings(registry, ref, out, **overrides)
    return ["sft", "--no-progress", *(pairs if legacy else [w for p in pairs for w in ("--set", p)])]


def run_trainer(args, env=None, check=True, launcher=None, cwd=None):
    """`trainer ARGS` (or under `launcher`, e.g. torchrun) in a fresh process (in folder `cwd`)."""
    cmd = (launcher or [str(BIN / "trainer")]) + args
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env={**os.environ, **(env or {})}, cwd=cwd)
    if check and r.returncode != 0:
        raise AssertionError(f"exit {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}")
    return r


def metrics(run_dir):
    """Metrics per step; a step logged twice (before a kill and after the resume) keeps its last value."""
    records = {}
    for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        records[r["step"]] = r
    return records


def large_share(image, text: str) -> float:
    """A reward a policy reaches by its word choices alone: the share of "large" among the size words
    of a text (0 when it has none). `trainer rl --set reward=tests.helpers:large_share`."""
    words = re.findall(r"\b(large|small)\b", text, re.I)
    return sum(w.lower() == "large" for w in words) / len(words) if words else 0.0
