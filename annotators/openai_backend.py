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
import math
import os
import random
import time

import openai

from annotators.annotator import Completion, OnDone, Request, SamplingConfig, speed_only


@dataclasses.dataclass(kw_only=True)
class OpenAIConfig:
    """Where the server is and how fast to ask it: all speed-only (out of run keys), so a run may
    resume against another replica of the same model or at another pace."""

    base_url: str = speed_only("http://localhost:8000/v1")
    concurrency: int = speed_only(64)  # requests in flight
    timeout_s: float = speed_only(120.0)
    max_retries: int = speed_only(6)  # transport retries per request, before the attempt counts as failed
    backoff_base_s: float = speed_only(0.5)
    backoff_max_s: float = speed_only(30.0)
    retry_after_max_s: float = speed_only(60.0)  # a server's Retry-After beyond this is cut to it


def _retry_after(error: openai.APIStatusError, cap_s: float) -> float | None:
    """The server's wait in seconds, capped at `cap_s`: a non-negative finite number or an HTTP date;
    anything else (`inf`, `soon`, a date without a zone) is ignored, and our own backoff applies."""
    value = error.response.headers.get("retry-after", "").strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            parsed = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if parsed is None or parsed.tzinfo is None:
            return None
        seconds = parsed.timestamp() - time.time()
    if not math.isfinite(seconds):
        return None
    return min(max(0.0, seconds), cap_s)


class BackendUnavailable(ValueError):
    """The server refuses the whole run (a rejected key, a model it does not serve) or cannot be
    reached: a job error, never a row's. Nothing is published; fix it and rerun."""


def check_server(model: str, config: OpenAIConfig) -> None:
    """Before any work: the server answers, accepts the key and serves `model` (GET /models)."""
    client = openai.OpenAI(base_url=config.base_url, api_key=os.environ.get("OPENAI_API_KEY", "EMPTY"),
                           timeout=min(config.timeout_s, 30.0), max_retries=2)
    try:
        served = [m.id for m in client.models.list()]
    except (openai.AuthenticationError, openai.PermissionDeniedError) as e:
        raise BackendUnavailable(f"{config.base_url} refused the API key (HTTP {e.status_code}): set "
                                 "OPENAI_API_KEY to a key it accepts") from None
    except openai.APIConnectionError as e:
        raise BackendUnavailable(f"cannot reach {config.base_url}: {e}") from None
    except openai.APIStatusError as e:
        if e.status_code == 404:  # a server without the models route: the first request will tell
            return
        raise BackendUnavailable(f"{config.base_url} answered GET /models with HTTP {e.status_code}") from None
    finally:
        client.close()
    if served and model not in served:
        raise BackendUnavailable(f"{config.base_url} does not serve model {model!r}; it serves {served[:10]}")


class OpenAIBackend:
    name = "openai"

    def __init__(self, model: str, config: OpenAIConfig | None = None):
        self.model = model
        self.config = config or OpenAIConfig()
        self.retries: collections.Counter[str] = collections.Counter()  # the last run's transport errors, by reason

    def run(self, requests: list[Request], sampling: SamplingConfig, on_done: OnDone) -> None:
        self.retries = collections.Counter()  # this run's: the stage adds them to its stats
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
                # One deadline for the whole request: the client's own timeout restarts with every
                # byte, so a server trickling its answer would hold the request for ever.
                response = await asyncio.wait_for(client.chat.completions.create(
                    model=self.model, messages=request.messages, temperature=sampling.temperature,
                    top_p=sampling.top_p, max_tokens=sampling.max_tokens, seed=request.seed), cfg.timeout_s)
                choice = response.choices[0]
                usage = response.usage
                return Completion(choice.message.content or "", choice.finish_reason,
                                  usage.prompt_tokens if usage else 0, usage.completion_tokens if usage else 0)
            except openai.RateLimitError as e:
                self.retries["429"] += 1
                wait, last = _retry_after(e, cfg.retry_after_max_s), f"rate_limited: {e.status_code}"
            except openai.InternalServerError as e:
                self.retries["5xx"] += 1
                wait, last = _retry_after(e, cfg.retry_after_max_s), f"server_error: {e.status_code}"
            except (openai.AuthenticationError, openai.PermissionDeniedError) as e:  # the run's, not the row's
                raise BackendUnavailable(f"{cfg.base_url} refused the API key (HTTP {e.status_code})") from None
            except openai.NotFoundError as e:
                raise BackendUnavailable(f"{cfg.base_url}: HTTP 404 for model {self.model!r}: {e.message}"[:500]) from None
            except (openai.APITimeoutError, asyncio.TimeoutError):
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
