"""The `openai` backend: any OpenAI-compatible chat server, first of all `vllm serve`.

Requests go out through the official async client with at most `concurrency` in flight. Transient
failures (429, 5xx, timeouts, dropped connections) are retried here, not by the client, so that a
`Retry-After` header is honoured exactly and every retry is counted: exponential backoff with full
jitter otherwise. A response that cannot be used (a malformed body, a 4xx) fails that attempt at
once; the annotator then retries the sample with a new seed. The API key comes from
`OPENAI_API_KEY` and is never stored in a config, manifest or log.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import email.utils
import os
import random
import time

import openai

from annotators.annotator import Completion, OnDone, Request, SamplingConfig


@dataclasses.dataclass(kw_only=True)
class OpenAIConfig:
    base_url: str = "http://localhost:8000/v1"
    concurrency: int = 64  # requests in flight
    timeout_s: float = 120.0
    max_retries: int = 6  # transport retries per request, before the attempt counts as failed
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0


def _retry_after(error: openai.APIStatusError) -> float | None:
    value = error.response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value)  # an HTTP date
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


class OpenAIBackend:
    name = "openai"

    def __init__(self, model: str, config: OpenAIConfig | None = None):
        self.model = model
        self.config = config or OpenAIConfig()
        self.retries: collections.Counter[str] = collections.Counter()  # why requests were retried

    def run(self, requests: list[Request], sampling: SamplingConfig, on_done: OnDone) -> None:
        asyncio.run(self._run(requests, sampling, on_done))

    async def _run(self, requests: list[Request], sampling: SamplingConfig, on_done: OnDone) -> None:
        client = openai.AsyncOpenAI(base_url=self.config.base_url, api_key=os.environ.get("OPENAI_API_KEY", "EMPTY"),
                                    timeout=self.config.timeout_s, max_retries=0)
        limit = asyncio.Semaphore(self.config.concurrency)

        async def serve(request: Request | None) -> None:
            while request is not None:  # a follow-up (a retry) goes out as soon as its answer is judged
                async with limit:
                    completion = await self._complete(client, request, sampling)
                request = on_done(request, completion)

        try:
            await asyncio.gather(*(serve(r) for r in requests))
        finally:
            await client.close()

    async def _complete(self, client: openai.AsyncOpenAI, request: Request, sampling: SamplingConfig) -> Completion:
        cfg = self.config
        for retry in range(cfg.max_retries + 1):
            wait = None
            try:
                response = await client.chat.completions.create(
                    model=self.model, messages=request.messages, temperature=sampling.temperature,
                    top_p=sampling.top_p, max_tokens=sampling.max_tokens, seed=request.seed)
                choice = response.choices[0]
                usage = response.usage
                return Completion(choice.message.content or "", choice.finish_reason,
                                  usage.prompt_tokens if usage else 0, usage.completion_tokens if usage else 0)
            except openai.RateLimitError as e:
                self.retries["429"] += 1
                wait, last = _retry_after(e), f"rate_limited: {e.status_code}"
            except openai.InternalServerError as e:
                self.retries["5xx"] += 1
                wait, last = _retry_after(e), f"server_error: {e.status_code}"
            except openai.APITimeoutError:
                self.retries["timeout"] += 1
                last = f"timeout: no answer in {cfg.timeout_s}s"
            except openai.APIConnectionError as e:
                self.retries["connection"] += 1
                last = f"connection_error: {e}"
            except openai.APIStatusError as e:  # other 4xx: retrying the same request won't help
                return Completion("", None, error=f"client_error: {e.status_code} {e.message}"[:500])
            except (openai.APIResponseValidationError, ValueError, TypeError, AttributeError, IndexError) as e:
                return Completion("", None, error=f"malformed_response: {type(e).__name__}: {e}"[:500])
            if retry < cfg.max_retries:
                if wait is None:  # full jitter: uniform in [0, capped exponential]
                    wait = random.uniform(0, min(cfg.backoff_max_s, cfg.backoff_base_s * 2**retry))
                await asyncio.sleep(wait)
        return Completion("", None, error=f"{last} (after {cfg.max_retries} retries)")
