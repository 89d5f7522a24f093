"""Reasoning-trace writers: Qwen2.5-VL through vLLM (engine or OpenAI-compatible server) or
transformers, versioned prompt templates, and trace validators. Imports only `schemas`."""

import paraforge_compat  # noqa: F401  (first, in every process)

from annotators.annotator import (Annotation, Completion, ReasoningAnnotator, Request, Sample,
                                  SamplingConfig)
from annotators.config import AnnotatorConfig, build_annotator
from annotators.prompts import PromptTemplate, load_prompts
from annotators.validators import ValidatorConfig

__all__ = ["Annotation", "AnnotatorConfig", "Completion", "PromptTemplate", "ReasoningAnnotator",
           "Request", "Sample", "SamplingConfig", "ValidatorConfig", "build_annotator", "load_prompts"]
