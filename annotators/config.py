"""The annotator's one config object, and the one place that builds a backend (for the annotator and the judge)."""

from __future__ import annotations

import dataclasses

from annotators.annotator import Backend, ReasoningAnnotator, SamplingConfig, speed_only
from annotators.openai_backend import OpenAIConfig
from annotators.prompts import DEFAULT_PROMPTS, load_prompts
from annotators.validators import ValidatorConfig
from annotators.vision import DEFAULT_IMAGE_MAX_PIXELS, MIN_PIXELS
from annotators.vllm_backend import VLLMConfig

BACKENDS = ("vllm", "openai", "transformers")


@dataclasses.dataclass(kw_only=True)
class AnnotatorConfig:
    backend: str = "vllm"  # vllm | openai | transformers
    model: str = "Qwen/Qwen2.5-VL-7B-Instruct"  # hub id or local folder (served name for openai)
    revision: str | None = None
    prompt_edit: str = DEFAULT_PROMPTS["edit"]  # built-in id or a YAML file
    prompt_generate: str = DEFAULT_PROMPTS["generate"]
    max_attempts: int = 3
    image_max_pixels: int = DEFAULT_IMAGE_MAX_PIXELS  # each image downscaled to this for the VLM (~1,280 tokens)
    max_model_len: int | None = None  # prompts must fit it; default: the vLLM engine's, else 32768
    device: str = speed_only("auto")  # auto | cpu | cuda: where the vllm / transformers actors run (cuda: never a CPU fallback)
    sampling: SamplingConfig = dataclasses.field(default_factory=SamplingConfig)
    validators: ValidatorConfig = dataclasses.field(default_factory=ValidatorConfig)
    openai: OpenAIConfig = dataclasses.field(default_factory=OpenAIConfig)
    vllm: VLLMConfig = dataclasses.field(default_factory=VLLMConfig)

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown backend {self.backend!r}; choose one of {BACKENDS}")
        if self.image_max_pixels < MIN_PIXELS:
            raise ValueError(f"image_max_pixels {self.image_max_pixels} is below the VLM's minimum {MIN_PIXELS}")

    @property
    def model_len(self) -> int:
        """The length every prompt plus its completion must fit."""
        if self.max_model_len:
            return self.max_model_len
        return self.vllm.max_model_len if self.backend == "vllm" else 32768  # Qwen2.5-VL's context


def build_backend(backend: str, model: str, revision: str | None = None, device: str = "auto",
                  openai: OpenAIConfig | None = None, vllm: VLLMConfig | None = None, seed: int = 0) -> Backend:
    """The one place a backend is built: loads the model (vllm, transformers) or opens nothing yet
    (openai). Shared by the annotator and the judge."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
    if backend == "openai":
        from annotators.openai_backend import OpenAIBackend

        return OpenAIBackend(model, openai)
    if backend == "transformers":
        from annotators.transformers_backend import TransformersBackend

        return TransformersBackend(model, revision, device)
    from annotators.vllm_backend import VLLMBackend

    return VLLMBackend(model, revision, vllm, seed)


def build_annotator(cfg: AnnotatorConfig) -> ReasoningAnnotator:
    backend = build_backend(cfg.backend, cfg.model, cfg.revision, cfg.device, cfg.openai, cfg.vllm, cfg.sampling.seed)
    return ReasoningAnnotator(backend, load_prompts(cfg.prompt_edit, cfg.prompt_generate), cfg.validators,
                              cfg.sampling, cfg.max_attempts, cfg.image_max_pixels, cfg.model_len)
