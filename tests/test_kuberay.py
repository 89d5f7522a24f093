"""The KubeRay manifests as a cluster would read them: `ray.io/v1` RayJob fields, GPU requests equal
to limits, every path the job uses mounted in every pod, /dev/shm for the object store, secrets from
Kubernetes, the driver off the head, worker shapes that fit what the stage asks for."""

import re
import shlex
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
KUBERAY = REPO / "jobs" / "kuberay"
TEMPLATE = {"ingest": "cpu-data", "annotate": "gpu-annotate", "score": "gpu-annotate", "filter": "cpu-data",
            "tokenize": "gpu-train", "sft": "gpu-train", "rl": "gpu-train"}
# RayJob spec fields of ray.io/v1 (KubeRay 1.x); anything else is rejected by the CRD's schema
RAYJOB_FIELDS = {"entrypoint", "entrypointNumCpus", "entrypointNumGpus", "entrypointResources", "runtimeEnvYAML",
                 "shutdownAfterJobFinishes", "ttlSecondsAfterFinished", "submissionMode", "rayClusterSpec", "jobId",
                 "metadata", "suspend", "clusterSelector", "submitterPodTemplate", "submitterConfig",
                 "activeDeadlineSeconds", "backoffLimit", "deletionStrategy", "managedBy"}
SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD", re.IGNORECASE)


def jobs() -> dict[str, dict]:
    return {p.stem: yaml.safe_load(p.read_text()) for p in sorted(KUBERAY.glob("*.yaml")) if p.stem in TEMPLATE}


def pods(job: dict) -> list[tuple[str, dict]]:
    cluster = job["spec"]["rayClusterSpec"]
    return [("head", cluster["headGroupSpec"]["template"]["spec"])] + [
        (group["groupName"], group["template"]["spec"]) for group in cluster["workerGroupSpecs"]]


def flag(entrypoint: str, name: str) -> str | None:
    words = shlex.split(entrypoint)
    return words[words.index(name) + 1] if name in words else None


def setting(entrypoint: str, key: str) -> str | None:
    """The value of `--set key=value` in an entrypoint."""
    words = shlex.split(entrypoint)
    found = [w.split("=", 1)[1] for prev, w in zip(words, words[1:]) if prev == "--set" and w.startswith(key + "=")]
    return found[-1] if found else None


def gpus(pod: dict) -> int:
    return int(pod["containers"][0]["resources"]["limits"].get("nvidia.com/gpu", 0))


def test_every_stage_has_a_rayjob_a_cluster_accepts_and_places():
    assert set(jobs()) == set(TEMPLATE)
    claim = yaml.safe_load((KUBERAY / "shared-volume.yaml").read_text())
    assert claim["kind"] == "PersistentVolumeClaim" and "ReadWriteMany" in claim["spec"]["accessModes"]
    for stage, job in jobs().items():
        spec = job["spec"]
        assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob"), stage
        assert set(spec) <= RAYJOB_FIELDS, (stage, set(spec) - RAYJOB_FIELDS)
        assert spec["entrypoint"].startswith(f"python -m jobs.{stage} ")
        # the driver asks for a CPU and the head has none: it runs on a worker
        assert spec["entrypointNumCpus"] >= 1, stage
        assert spec["rayClusterSpec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0", stage
        runtime = yaml.safe_load(spec["runtimeEnvYAML"])
        assert not {"pip", "conda", "uv"} & set(runtime), stage  # dependencies come from the image
        template = yaml.safe_load((REPO / "jobs" / "runtime_env" / f"{TEMPLATE[stage]}.yaml").read_text())
        assert set(template["env_vars"]) <= set(runtime["env_vars"]), (stage, TEMPLATE[stage])
        used = [w for w in [*shlex.split(spec["entrypoint"]), *map(str, runtime["env_vars"].values())]
                for w in re.findall(r"(/mnt/[\w./-]+)", w)]
        for name, pod in pods(job):
            container = pod["containers"][0]
            resources = container["resources"]
            assert resources["requests"].get("nvidia.com/gpu") == resources["limits"].get("nvidia.com/gpu"), (stage, name)
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            volumes = {v["name"]: v for v in pod["volumes"]}
            assert set(mounts.values()) <= set(volumes), (stage, name)
            assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory", (stage, name)
            for path in used:  # the driver and its workers may run in any pod
                assert any(path == m or path.startswith(m.rstrip("/") + "/") for m in mounts), (stage, name, path)
            for volume in volumes.values():
                if "persistentVolumeClaim" in volume:
                    assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
            for variable in container.get("env", []):
                if SECRET_NAME.search(variable["name"]):
                    assert "value" not in variable and "secretKeyRef" in variable["valueFrom"], (stage, variable)
        for group in spec["rayClusterSpec"]["workerGroupSpecs"]:
            assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], (stage, group["groupName"])


def test_worker_shapes_fit_what_each_stage_asks_for():
    for stage, job in jobs().items():
        spec = job["spec"]
        entry = spec["entrypoint"]
        workers = spec["rayClusterSpec"]["workerGroupSpecs"]
        gpu_groups = [(g, gpus(g["template"]["spec"])) for g in workers if gpus(g["template"]["spec"])]
        if stage in ("ingest", "filter"):
            assert not gpu_groups and spec.get("entrypointNumGpus", 0) == 0
        if stage in ("annotate", "score"):  # one tensor-parallel engine per pod: its GPUs on one node
            backend = "annotator.backend" if stage == "annotate" else "judge.backend"
            tp = int(setting(entry, f"{backend}.vllm.tensor_parallel_size"))
            assert tp > 1 and all(n == tp for _, n in gpu_groups)
            assert int(flag(entry, "--concurrency")) <= sum(g["maxReplicas"] for g, _ in gpu_groups)
            assert setting(entry, f"{backend}.device") == "cuda"  # never a silent CPU fallback
        if stage == "tokenize":
            assert setting(entry, "device") == "cuda"
            assert int(flag(entry, "--concurrency")) <= sum(g["maxReplicas"] * n for g, n in gpu_groups)
        if stage in ("sft", "rl"):  # one DeepSpeed rank per GPU of 8-GPU nodes, through Ray Train
            assert "--ray-gpu" in entry and spec["entrypointNumGpus"] == 0
            assert all(n == 8 for _, n in gpu_groups)
            assert int(flag(entry, "--ray-workers")) == sum(g["replicas"] * n for g, n in gpu_groups)


@pytest.mark.parametrize("stage", ["sft", "rl"])
def test_trainer_entrypoints_hold_only_known_settings(stage):
    """Every `key=value` of a trainer manifest is a field of the command's config, so a renamed or
    removed setting fails here, not an hour into a cluster's start."""
    from pipeline.config import load_config
    from trainer.rl.pararl import RLConfig
    from trainer.sft import SFTConfig

    words = shlex.split(jobs()[stage]["spec"]["entrypoint"])
    overrides = [w for w in words if "=" in w and not w.startswith("-")]
    config = flag(jobs()[stage]["spec"]["entrypoint"], "--config")
    cfg = load_config(RLConfig if stage == "rl" else SFTConfig, str(REPO / config), overrides)
    assert cfg.out_dir.startswith("s3://")  # checkpoints on shared storage


def test_every_entrypoint_flag_is_one_the_command_takes():
    import typer

    from pipeline.cli import app as pipeline_app
    from trainer.cli import app as trainer_app

    commands = {**typer.main.get_command(pipeline_app).commands, **typer.main.get_command(trainer_app).commands}
    for stage, job in jobs().items():
        known = {opt for param in commands[stage].params for opt in [*param.opts, *param.secondary_opts]}
        flags = {w.split("=", 1)[0] for w in shlex.split(job["spec"]["entrypoint"]) if w.startswith("--")}
        assert flags <= known, (stage, flags - known)
