"""`ReasoningAnnotator`: one interface over the generation backends, with validation and retries.

A backend only turns chat requests into completions (`run`), one completion per request, handed
to a callback as each finishes: a request the backend cannot serve comes back with an `error`,
never as an exception for the batch. The annotator downscales the images to the VLM's pixel
budget, refuses a prompt that cannot fit the model length before sending it, renders the prompts,
validates every completion as it arrives, and answers a rejected one with a new request (the next
seed) at once, up to `max_attempts`, so retries never wait for the rest of the batch; an error that
a retry cannot fix (a refused request) ends the sample's attempts at once. A sample that never passes comes back with every
attempt's reason and the last error's message.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any, Protocol

from annotators.prompts import PromptTemplate, load_prompts
from annotators.validators import ValidatorConfig, build_rules, validate
from annotators.vision import DEFAULT_IMAGE_MAX_PIXELS, fit_image, prompt_tokens

# Errors a new attempt cannot fix: the request itself was refused (HTTP 4xx, a vLLM per-request
# error) or cannot fit the model. Transport errors (5xx, timeouts) are retried by the backends.
PERMANENT_ERRORS = ("client_error", "engine_error", "prompt_too_long", "undecodable_image")
# Errors of the server, not the row, that outlasted the backend's retries: they may pass later.
TRANSIENT_ERRORS = ("rate_limited", "server_error", "timeout", "connection_error")


def speed_only(default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING) -> Any:
    """A config field that changes only how a run goes (pace, placement, where it connects), never
    what it writes: left out of the run key (`pipeline.config.run_identity`), so it may change when a
    run resumes. Declared here, the lowest layer whose configs (OpenAIConfig, VLLMConfig) need it."""
    return dataclasses.field(default=default, default_factory=default_factory, metadata={"speed_only": True})


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
    key: str = ""  # whose request it is (the sample id), for the caller's `on_done`


@dataclasses.dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str | None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None  # set when the backend failed for good (after its own retries)


# Called by a backend as each request completes; may return a follow-up request (a retry), which
# the backend sends at once, as a new request. Always called from one thread at a time.
OnDone = Callable[[Request, Completion], "Request | None"]


class Backend(Protocol):
    name: str

    def run(self, requests: list[Request], sampling: SamplingConfig, on_done: OnDone) -> None:
        """Serve `requests` and every follow-up, keeping as many in flight as the backend can."""


def generate(backend: Backend, requests: list[Request], sampling: SamplingConfig) -> list[Completion]:
    """One completion per request, in order, without follow-ups (the judge's batch calls)."""
    if not requests:  # a batch whose every item failed before sending: nothing to start
        return []
    keyed = [dataclasses.replace(r, key=str(i)) for i, r in enumerate(requests)]
    completions: list[Completion | None] = [None] * len(keyed)

    def on_done(request: Request, completion: Completion) -> None:
        completions[int(request.key)] = completion

    backend.run(keyed, sampling, on_done)
    return completions


def run_in_rounds(generate_batch: Callable[[list[Request]], list[Completion]], requests: list[Request],
                  on_done: OnDone) -> None:
    """`run` for a backend that can only serve a whole batch at a time: follow-ups make the next batch."""
    while requests:
        completions = generate_batch(requests)
        requests = [follow for request, completion in zip(requests, completions, strict=True)
                    if (follow := on_done(request, completion)) is not None]


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
    error: str | None = None  # the last backend error's message, for the quarantine

    @property
    def accepted(self) -> bool:
        return self.reasoning is not None


def attempt_seed(base: int, sample_id: str, attempt: int) -> int:
    """Deterministic per sample and attempt, so a rerun asks for exactly the same generations."""
    return (base + int(sample_id[:8], 16) + 7919 * attempt) % (2**31 - 1)


class ReasoningAnnotator:
    def __init__(self, backend: Backend, prompts: dict[str, PromptTemplate] | None = None,
                 validators: ValidatorConfig | None = None, sampling: SamplingConfig | None = None,
                 max_attempts: int = 3, image_max_pixels: int = DEFAULT_IMAGE_MAX_PIXELS,
                 max_model_len: int | None = None):
        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        self.backend = backend
        self.prompts = prompts or load_prompts()
        self.rules = build_rules(validators or ValidatorConfig())
        self.sampling = sampling or SamplingConfig()
        self.max_attempts = max_attempts
        self.image_max_pixels, self.max_model_len = image_max_pixels, max_model_len

    def _messages(self, sample: Sample) -> list[dict[str, Any]]:
        """The chat for `sample` with its images fitted to the budget; raises ValueError (an
        `undecodable_image` or `prompt_too_long` error) when it cannot be sent."""
        # The annotator sees the input image (edits) and the target; the prompt forbids naming it.
        images = [sample.input_image, sample.output_image] if sample.task == "edit" else [sample.output_image]
        try:
            fitted = [fit_image(image, self.image_max_pixels) for image in images]
        except Exception as e:  # checked at ingest, so rare: this row, not the batch
            raise ValueError(f"undecodable_image: {type(e).__name__}: {e}") from None
        prompt = self.prompts[sample.task]
        messages = prompt.messages(sample.instruction, [data for data, _, _ in fitted])
        if self.max_model_len:
            chars = len(prompt.system) + len(prompt.user) + len(sample.instruction)
            needed = prompt_tokens(chars, [(w, h) for _, w, h in fitted], self.image_max_pixels)
            if needed + self.sampling.max_tokens > self.max_model_len:
                raise ValueError(f"prompt_too_long: ~{needed} prompt tokens + max_tokens {self.sampling.max_tokens} "
                                 f"> max_model_len {self.max_model_len}")
        return messages

    def annotate(self, samples: list[Sample]) -> list[Annotation]:
        """Every sample's first attempt goes to the backend at once; a rejected attempt comes back
        through `on_done` and is sent again at once, with the next seed, as a new request."""
        results = {s.sample_id: Annotation(s.sample_id, None, 0, None, {}, []) for s in samples}
        first = []
        for sample in samples:
            try:
                first.append(Request(self._messages(sample), attempt_seed(self.sampling.seed, sample.sample_id, 0),
                                     sample.sample_id))
            except ValueError as e:  # never sent: no attempt spent
                self._failed(results[sample.sample_id], str(e))

        def on_done(request: Request, completion: Completion) -> Request | None:
            result = results[request.key]
            result.attempts += 1
            result.prompt_tokens += completion.prompt_tokens
            result.completion_tokens += completion.completion_tokens
            result.finish_reason = completion.finish_reason
            if completion.error is not None:
                if self._failed(result, completion.error):
                    return None
            else:
                reason, result.verdicts = validate(self.rules, completion.text, completion.finish_reason)
                if reason is None:
                    result.reasoning = completion.text.strip()
                    return None
                result.attempt_reasons.append(reason)
            if result.attempts == self.max_attempts:
                return None
            return dataclasses.replace(request, seed=attempt_seed(self.sampling.seed, request.key, result.attempts))

        self.backend.run(first, self.sampling, on_done)
        return [results[s.sample_id] for s in samples]

    @staticmethod
    def _failed(result: Annotation, error: str) -> bool:
        """Record a backend error ("reason: message"); True when no new attempt can fix it."""
        reason = error.split(":", 1)[0]
        result.attempt_reasons.append(reason)
        result.verdicts, result.error = {"backend": error}, error
        return reason in PERMANENT_ERRORS


def to_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True)
