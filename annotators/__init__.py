"""Reasoning-trace writers: Qwen2.5-VL through vLLM (engine or OpenAI-compatible server) or
transformers, versioned prompt templates, trace validators, and the VLM judge of `trainer eval` on
the same backends. Imports only `schemas`."""

import paraforge_compat  # noqa: F401  (first, in every process)
from annotators.annotator import Annotation, Completion, ReasoningAnnotator, Request, Sample, SamplingConfig
from annotators.backend import BackendConfig, build_backend
from annotators.config import AnnotatorConfig, build_annotator
from annotators.judge import Judge, JudgeConfig, Judgement, build_judge, parse_score
from annotators.prompts import PromptTemplate, load_prompts
from annotators.validators import ValidatorConfig

__all__ = ["Annotation", "AnnotatorConfig", "BackendConfig", "Completion", "Judge", "JudgeConfig", "Judgement",
           "PromptTemplate", "ReasoningAnnotator", "Request", "Sample", "SamplingConfig", "ValidatorConfig",
           "build_annotator", "build_backend", "build_judge", "load_prompts", "parse_score"]
