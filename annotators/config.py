"""The annotator's one config object, and the one place that builds an annotator from it."""

from __future__ import annotations

import dataclasses

from annotators.annotator import ReasoningAnnotator, SamplingConfig
from annotators.openai_backend import OpenAIConfig
from annotators.prompts import DEFAULT_PROMPTS, load_prompts
from annotators.validators import ValidatorConfig
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
    device: str = "auto"  # transformers backend only
    sampling: SamplingConfig = dataclasses.field(default_factory=SamplingConfig)
    validators: ValidatorConfig = dataclasses.field(default_factory=ValidatorConfig)
    openai: OpenAIConfig = dataclasses.field(default_factory=OpenAIConfig)
    vllm: VLLMConfig = dataclasses.field(default_factory=VLLMConfig)

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown backend {self.backend!r}; choose one of {BACKENDS}")


def build_annotator(cfg: AnnotatorConfig) -> ReasoningAnnotator:
    """Loads the model (vllm, transformers) or opens nothing yet (openai)."""
    if cfg.backend == "openai":
        from annotators.openai_backend import OpenAIBackend

        backend = OpenAIBackend(cfg.model, cfg.openai)
    elif cfg.backend == "transformers":
        from annotators.transformers_backend import TransformersBackend

        backend = TransformersBackend(cfg.model, cfg.revision, cfg.device)
    else:
        from annotators.vllm_backend import VLLMBackend

        backend = VLLMBackend(cfg.model, cfg.revision, cfg.vllm, cfg.sampling.seed)
    return ReasoningAnnotator(backend, load_prompts(cfg.prompt_edit, cfg.prompt_generate), cfg.validators,
                              cfg.sampling, cfg.max_attempts)
