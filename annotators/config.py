"""The annotator's one config object and its builder; the backend it runs on is a `BackendConfig`
(annotators/backend.py), shared with the judge."""

from __future__ import annotations

import dataclasses

from annotators.annotator import ReasoningAnnotator, SamplingConfig
from annotators.backend import BackendConfig, build_backend
from annotators.prompts import DEFAULT_PROMPTS, load_prompts
from annotators.validators import ValidatorConfig
from annotators.vision import DEFAULT_IMAGE_MAX_PIXELS, MIN_PIXELS


@dataclasses.dataclass(kw_only=True)
class AnnotatorConfig:
    backend: BackendConfig = dataclasses.field(default_factory=BackendConfig)  # Qwen2.5-VL-7B on vLLM
    prompt_edit: str = DEFAULT_PROMPTS["edit"]  # built-in id or a YAML file
    prompt_generate: str = DEFAULT_PROMPTS["generate"]
    max_attempts: int = 3
    image_max_pixels: int = DEFAULT_IMAGE_MAX_PIXELS  # each image downscaled to this for the VLM (~1,280 tokens)
    max_model_len: int | None = None  # prompts must fit it; default: the vLLM engine's, else 32768
    sampling: SamplingConfig = dataclasses.field(default_factory=SamplingConfig)
    validators: ValidatorConfig = dataclasses.field(default_factory=ValidatorConfig)

    def __post_init__(self) -> None:
        if self.image_max_pixels < MIN_PIXELS:
            raise ValueError(f"image_max_pixels {self.image_max_pixels} is below the VLM's minimum {MIN_PIXELS}")

    @property
    def model_len(self) -> int:
        """The length every prompt plus its completion must fit."""
        if self.max_model_len:
            return self.max_model_len
        return self.backend.vllm.max_model_len if self.backend.kind == "vllm" else 32768  # Qwen2.5-VL's context


def build_annotator(cfg: AnnotatorConfig) -> ReasoningAnnotator:
    return ReasoningAnnotator(build_backend(cfg.backend, cfg.sampling.seed),
                              load_prompts(cfg.prompt_edit, cfg.prompt_generate), cfg.validators, cfg.sampling,
                              cfg.max_attempts, cfg.image_max_pixels, cfg.model_len)
