"""`ReasoningAnnotator`: one interface over the generation backends, with validation and retries.

A backend only turns chat requests into completions (`generate`). The annotator renders the
prompts, validates every completion, and retries rejected samples with a new seed up to
`max_attempts`; a sample that never passes comes back with every attempt's reason.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Protocol

from annotators.prompts import PromptTemplate, load_prompts
from annotators.validators import ValidatorConfig, build_rules, validate


@dataclasses.dataclass(kw_only=True)
class SamplingConfig:
    temperature: float = 0.7
    top_p: float = 0.9
    max_tokens: int = 512
    seed: int = 0  # base seed; each sample and attempt derives its own from it


@dataclasses.dataclass(frozen=True)
class Request:
    messages: list[dict[str, Any]]
    seed: int


@dataclasses.dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str | None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None  # set when the backend failed for good (after its own retries)


class Backend(Protocol):
    name: str

    def generate(self, requests: list[Request], sampling: SamplingConfig) -> list[Completion]: ...


@dataclasses.dataclass(frozen=True)
class Sample:
    sample_id: str
    task: str
    instruction: str
    input_image: bytes | None
    output_image: bytes


@dataclasses.dataclass
class Annotation:
    sample_id: str
    reasoning: str | None  # None: rejected on every attempt
    attempts: int
    finish_reason: str | None
    verdicts: dict[str, str]  # of the accepted attempt, or of the last one
    attempt_reasons: list[str]  # reason code of each rejected attempt
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def accepted(self) -> bool:
        return self.reasoning is not None


def attempt_seed(base: int, sample_id: str, attempt: int) -> int:
    """Deterministic per sample and attempt, so a rerun asks for exactly the same generations."""
    return (base + int(sample_id[:8], 16) + 7919 * attempt) % (2**31 - 1)


class ReasoningAnnotator:
    def __init__(self, backend: Backend, prompts: dict[str, PromptTemplate] | None = None,
                 validators: ValidatorConfig | None = None, sampling: SamplingConfig | None = None,
                 max_attempts: int = 3):
        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        self.backend = backend
        self.prompts = prompts or load_prompts()
        self.rules = build_rules(validators or ValidatorConfig())
        self.sampling = sampling or SamplingConfig()
        self.max_attempts = max_attempts

    def _request(self, sample: Sample, attempt: int) -> Request:
        # The annotator sees the input image (edits) and the target; the prompt forbids naming it.
        images = [sample.input_image, sample.output_image] if sample.task == "edit" else [sample.output_image]
        messages = self.prompts[sample.task].messages(sample.instruction, images)
        return Request(messages, attempt_seed(self.sampling.seed, sample.sample_id, attempt))

    def annotate(self, samples: list[Sample]) -> list[Annotation]:
        results = {s.sample_id: Annotation(s.sample_id, None, 0, None, {}, []) for s in samples}
        pending = list(samples)
        for attempt in range(self.max_attempts):
            if not pending:
                break
            completions = self.backend.generate([self._request(s, attempt) for s in pending], self.sampling)
            still_pending = []
            for sample, completion in zip(pending, completions, strict=True):
                result = results[sample.sample_id]
                result.attempts = attempt + 1
                result.prompt_tokens += completion.prompt_tokens
                result.completion_tokens += completion.completion_tokens
                result.finish_reason = completion.finish_reason
                if completion.error is not None:
                    result.attempt_reasons.append(completion.error.split(":", 1)[0])
                    result.verdicts = {"backend": completion.error}
                    still_pending.append(sample)
                    continue
                reason, result.verdicts = validate(self.rules, completion.text, completion.finish_reason)
                if reason is None:
                    result.reasoning = completion.text.strip()
                else:
                    result.attempt_reasons.append(reason)
                    still_pending.append(sample)
            pending = still_pending
        return [results[s.sample_id] for s in samples]


def to_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True)
