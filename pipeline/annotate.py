"""`pipeline annotate`: a raw version -> an `annotated` version with a validated reasoning trace per
sample, or the sample in quarantine with every attempt's reason.

`AnnotateStage` runs on the stage driver (`pipeline.run.run_stage(plan, config)`): a pool of actors
for backends that hold a model (one engine per actor, one actor per GPU or tensor-parallel group),
plain tasks for the `openai` backend (`pipeline.vlm`). Each worker reads its unit of the raw version,
writes the complete annotated rows and the quarantine itself, and leaves a completion marker;
rerunning with the same arguments resumes from the units already done.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any

import pyarrow as pa

from annotators import AnnotatorConfig, Sample, build_annotator
from annotators.annotator import TRANSIENT_ERRORS, speed_only, to_json
from annotators.prompts import load_prompts
from pipeline.registry import DatasetRegistry, split_ref
from pipeline.stage import Plan, Processed, Stage, rejected_rows
from pipeline.vlm import backend_resources, backend_stats, launch, transport_errors
from schemas import ANNOTATED, RAW, Counts, VersionManifest

STAGE = "annotate"


@dataclasses.dataclass(kw_only=True)
class AnnotateConfig:
    dataset: str  # NAME[@VERSION|@TAG] of a raw version
    output: str | None = None  # dataset name of the result; default: the input's name
    # The annotator nested whole (its backend inside it, as in the judge's config), not flattened in:
    # one place declares its fields, and keys read the same in a YAML file and in --set
    # (annotator.backend.vllm.tensor_parallel_size=4); what is typed every day has its own flag.
    annotator: AnnotatorConfig = dataclasses.field(default_factory=AnnotatorConfig)
    concurrency: int = speed_only(1)  # annotator actors; with vllm, one per GPU
    batch_size: int = speed_only(64)  # samples per call of the transformers backend (the others take whole units)
    unit_rows: int = 256  # rows per unit: the unit of durable progress
    gpu_wait_s: float = speed_only(600.0)  # with device=cuda: how long to wait for GPUs to join the cluster
    registry: str | None = speed_only(None)
    ray_address: str | None = speed_only(None)


class AnnotateStage(Stage):
    """Raw rows -> annotated rows (the raw row plus its trace and how it was made) or rejects."""

    name = STAGE
    output_schema = ANNOTATED
    transient_reasons = TRANSIENT_ERRORS  # a server outage: the unit is redone on a rerun

    def __init__(self, config: AnnotateConfig, on_gpu: bool = False):
        # vllm and openai keep their own number of requests in flight: they take a whole unit at once
        self.batch_size = config.batch_size if config.annotator.backend.kind == "transformers" else config.unit_rows
        self.resources, backend = backend_resources(config.annotator.backend, config.concurrency, config.unit_rows,
                                                    on_gpu)
        self.config = dataclasses.replace(config.annotator, backend=backend)

    def setup(self) -> None:
        self.annotator = build_annotator(self.config)
        self.prompts = load_prompts(self.config.prompt_edit, self.config.prompt_generate)
        self.sampling = to_json(dataclasses.asdict(self.config.sampling))

    def process(self, rows: pa.Table) -> Processed:
        fields = ("sample_id", "task", "instruction", "input_image", "output_image")
        samples = [Sample(**r) for r in rows.select(fields).to_pylist()]
        results = self.annotator.annotate(samples)
        ok = [r.accepted for r in results]
        good = [r for r in results if r.accepted]
        kept = rows.filter(pa.array(ok))
        tasks = kept["task"].to_pylist()
        n = kept.num_rows
        kept = (kept.append_column("reasoning", pa.array([r.reasoning for r in good], pa.string()))
                .append_column("annotator_model", pa.array([self.config.backend.model_name] * n, pa.string()))
                .append_column("prompt_id", pa.array([self.prompts[t].id for t in tasks], pa.string()))
                .append_column("prompt_hash", pa.array([self.prompts[t].sha256 for t in tasks], pa.string()))
                .append_column("sampling_params", pa.array([self.sampling] * n, pa.string()))
                .append_column("attempts", pa.array([r.attempts for r in good], pa.int32()))
                .append_column("finish_reason", pa.array([r.finish_reason for r in good], pa.string()))
                .append_column("verdicts", pa.array([to_json(r.verdicts) for r in good], pa.string())))
        bad = [r for r in results if not r.accepted]
        rejected = rejected_rows(
            rows.filter(pa.array([not x for x in ok])), [r.attempt_reasons[-1] for r in bad],
            [_why(r) for r in bad],
            [to_json(r.verdicts) for r in bad])
        count = collections.Counter
        stats = {"attempts": {str(k): v for k, v in count(r.attempts for r in results).items()},
                 "rejected_attempts": dict(count(x for r in results for x in r.attempt_reasons)),
                 "generated_tokens": sum(r.completion_tokens for r in results)}
        return Processed(kept, rejected, {**stats, **backend_stats(self.annotator.backend)})


def _why(result) -> str:
    """A quarantined sample's message: every attempt's reason, then the last backend error."""
    attempts = "; ".join(f"attempt {i + 1}: {x}" for i, x in enumerate(result.attempt_reasons[:result.attempts]))
    error = f"last error: {result.error[:400]}" if result.error else ""
    return " | ".join(part for part in (attempts, error) if part)


def plan(config: AnnotateConfig, registry: DatasetRegistry) -> Plan:
    source = registry.resolve(config.dataset, schema="raw/1")
    a = config.annotator
    prompts = load_prompts(a.prompt_edit, a.prompt_generate)
    provenance = {"backend": a.backend.kind, "model": a.backend.model_name, "revision": a.backend.revision,
                  "prompts": {t: {"id": p.id, "sha256": p.sha256} for t, p in prompts.items()},
                  "sampling": dataclasses.asdict(a.sampling), "validators": dataclasses.asdict(a.validators),
                  "max_attempts": a.max_attempts, "image_max_pixels": a.image_max_pixels, "max_model_len": a.model_len}
    return Plan(name=STAGE, schema="annotated/1", output=config.output or split_ref(config.dataset)[0],
                make_stage=lambda on_gpu: AnnotateStage(config, on_gpu), provenance=provenance, source=source,
                columns=RAW.names, unit_rows=config.unit_rows, summarize=summarize,
                **launch(a.backend, config.gpu_wait_s))


def summarize(stats: dict[str, Any], counts: Counts, seconds: float) -> dict[str, Any]:
    tokens = stats.get("generated_tokens", 0)
    return {**stats, "attempts": dict(sorted(stats.get("attempts", {}).items())),
            "rejected_attempts": dict(sorted(stats.get("rejected_attempts", {}).items())), "generated_tokens": tokens,
            "traces_per_s": round(counts.input / seconds, 2) if seconds else None,
            "generated_tokens_per_s": round(tokens / seconds, 1) if seconds else None}


def report(manifest: VersionManifest) -> str:
    s = manifest.stats
    lines = [manifest.counts.line().replace("output", "annotated"),
             f"traces/s {s.get('traces_per_s')}  generated tokens/s {s.get('generated_tokens_per_s')}  "
             f"(this run: {s.get('seconds')} s, {s.get('resumed_units')} unit(s) resumed)",
             "attempts histogram: " + ", ".join(f"{k} attempt(s): {v}" for k, v in s.get("attempts", {}).items())]
    for title, key in (("rejected attempts by reason", "rejected_attempts"), ("quarantined by reason", "quarantine_reasons")):
        if s.get(key):
            lines.append(f"{title}:")
            lines += [f"  {reason:<20} {n}" for reason, n in s[key].items()]
    if s.get("transport_errors"):
        lines.append(transport_errors(s["transport_errors"]))
    return "\n".join(lines)
