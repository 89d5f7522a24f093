import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; vLLM-CPU would take far more by default

import paraforge_compat  # noqa: E402,F401

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def ray_local():
    """One embedded local Ray for the whole test session (starting one costs ~5 s)."""
    import ray

    from pipeline.ray_runtime import init_ray

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
