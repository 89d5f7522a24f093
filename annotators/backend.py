"""The VLM backend's one config and the one place a backend is built: the annotator, the score
stage's judge and `trainer eval`'s judge each hold a `BackendConfig` (composition: each gives its
own defaults as data, `dataclasses.field(default_factory=...)`), never a copy of its fields."""

from __future__ import annotations

import dataclasses

from annotators.annotator import Backend, speed_only
from annotators.openai_backend import OpenAIBackend, OpenAIConfig
from annotators.transformers_backend import TransformersBackend
from annotators.vllm_backend import VLLMBackend, VLLMConfig
from annotators.world.scene_backend import SceneBackend, SceneConfig

# verifier: only a judge's (annotators.judge.build_judge builds the shapes world's exact judge for it)
BACKENDS = ("vllm", "openai", "transformers", "scene", "verifier")


@dataclasses.dataclass(kw_only=True)
class BackendConfig:
    # vllm (in-process engine) | openai (any OpenAI-compatible server) | transformers | scene (the shapes
    # world's exact scene reader, annotators/world: no model, CPU only)
    kind: str = "vllm"
    model: str = "Qwen/Qwen2.5-VL-7B-Instruct"  # hub id or local folder (the served name for openai); scene: ignored
    revision: str | None = None
    device: str = speed_only("auto")  # auto | cpu | cuda: where vllm / transformers run (cuda: never a CPU fallback)
    openai: OpenAIConfig = dataclasses.field(default_factory=OpenAIConfig)  # kind=openai: the server, the pace
    vllm: VLLMConfig = dataclasses.field(default_factory=VLLMConfig)  # kind=vllm: the engine
    scene: SceneConfig = dataclasses.field(default_factory=SceneConfig)  # kind=scene: how often a trace errs

    @property
    def model_name(self) -> str:
        """What writes or judges the rows, as rows and lineage record it (the scene reader has no model)."""
        if self.kind in ("scene", "verifier"):
            return f"scene-reader(error_rate={self.scene.error_rate})" if self.kind == "scene" else "verifier"
        return self.model

    def __post_init__(self) -> None:
        if self.kind not in BACKENDS:
            raise ValueError(f"unknown backend {self.kind!r}; choose one of {BACKENDS}")


def build_backend(cfg: BackendConfig, seed: int = 0) -> Backend:
    """Loads the model (vllm, transformers: their libraries load here, not on import) or opens
    nothing yet (openai, scene)."""
    if cfg.kind == "scene":
        return SceneBackend(cfg.scene)
    if cfg.kind == "verifier":
        raise ValueError("kind=verifier is the shapes world's judge, not a VLM backend: only a judge takes it")
    if cfg.kind == "openai":
        return OpenAIBackend(cfg.model, cfg.openai)
    if cfg.kind == "transformers":
        return TransformersBackend(cfg.model, cfg.revision, cfg.device)
    return VLLMBackend(cfg.model, cfg.revision, cfg.vllm, seed)
