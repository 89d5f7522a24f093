"""`pipeline score`: an annotated version -> a `scored` version, every row graded by a VLM judge on
four axes, 0-100 each (schemas.SCORE_AXES):

- instruction_following: the target image carries out the instruction;
- reasoning_following: the target image shows what the reasoning trace says (the alignment the
  method is about: a fluent trace that is wrong about its pair teaches the model to say one thing
  and draw another);
- consistency (edits only): what the instruction does not ask to change stayed as it was;
- quality: the target image itself.

The judge is `annotators.judge` (the one `trainer eval` uses) over any backend: the vLLM engine in
actors, an OpenAI-compatible server from plain tasks (the same in-flight discipline as annotate:
every request of a unit goes out at once, `judge.backend.openai.concurrency` at a time), or transformers. The
rubrics are a versioned YAML file (default score-v1), its sha256 in the lineage and on every row.

Every row is kept, with its scores, the judge's answers and the reason of each failed judgement.
A failed judgement (no parseable score, a refused request) is null with a reason, counted per axis,
never a 0, and is not asked again: retrying until an answer parses biases scores towards what the
judge finds easy. Only a row the server could not answer at all (an outage that outlasted the
transport retries) is quarantined with the transient reason, and its unit is redone by a rerun
with the same arguments, like annotate. `pipeline filter` then cuts on the scores.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any

import pyarrow as pa

from annotators.annotator import TRANSIENT_ERRORS, speed_only, to_json
from annotators.backend import BackendConfig
from annotators.judge import JudgeConfig, JudgeItem, Judgement, Rubrics, build_judge
from pipeline.registry import DatasetRegistry, split_ref
from pipeline.stage import Plan, Processed, Stage, rejected_rows
from pipeline.vlm import backend_resources, backend_stats, launch, transport_errors
from schemas import ANNOTATED, SCORE_AXES, SCORED, SCORES, Counts, VersionManifest

STAGE = "score"
_PER_AXIS_TEXT = SCORED.field("judge_errors").type


def curation_judge() -> JudgeConfig:
    """Score's judge: Qwen2.5-VL-72B on the vLLM engine (or a local vLLM server, 64 in flight), the
    four curation axes of score-v1."""
    return JudgeConfig(backend=BackendConfig(kind="vllm", model="Qwen/Qwen2.5-VL-72B-Instruct"), rubrics="score-v1")


@dataclasses.dataclass(kw_only=True)
class ScoreConfig:
    dataset: str  # NAME[@VERSION|@TAG] of an annotated version
    # The judge nested whole, as `trainer eval` holds it; judge.rubrics: an id or a YAML file of the four axes
    judge: JudgeConfig = dataclasses.field(default_factory=curation_judge)
    output: str | None = None  # dataset name of the result; default: the input's name
    concurrency: int = speed_only(1)  # judge actors; with vllm, one per GPU (or tensor-parallel group)
    batch_size: int = speed_only(16)  # rows per call of the transformers backend (the others take whole units)
    unit_rows: int = 256  # rows per unit: the unit of durable progress (~4 requests per row)
    gpu_wait_s: float = speed_only(600.0)  # with device=cuda: how long to wait for GPUs to join the cluster
    registry: str | None = speed_only(None)
    ray_address: str | None = speed_only(None)


class ScoreStage(Stage):
    """Annotated rows -> scored rows; a row the server could not answer is quarantined (transient)."""

    name = STAGE
    output_schema = SCORED
    transient_reasons = TRANSIENT_ERRORS  # a server outage: the unit is redone on a rerun

    def __init__(self, config: ScoreConfig, rubrics: Rubrics, on_gpu: bool = False):
        self.rubrics = rubrics
        self.batch_size = config.batch_size if config.judge.backend.kind == "transformers" else config.unit_rows
        self.resources, backend = backend_resources(config.judge.backend, config.concurrency, config.unit_rows,
                                                    on_gpu, requests_per_row=len(SCORE_AXES))
        self.config = dataclasses.replace(config.judge, backend=backend)

    def setup(self) -> None:
        self.judge = build_judge(self.config, self.rubrics)

    def process(self, rows: pa.Table) -> Processed:
        fields = ("sample_id", "task", "instruction", "reasoning", "output_image", "input_image")
        items = [JudgeItem(**r) for r in rows.select(fields).to_pylist()]
        judged = self.judge.judge(items)
        outage = [sorted({j.reason for j in row.values() if j.reason in TRANSIENT_ERRORS}) for row in judged]
        ok = [not reasons for reasons in outage]
        good = [row for row, keep in zip(judged, ok) if keep]
        kept = rows.filter(pa.array(ok, pa.bool_()))
        n = kept.num_rows
        per_axis = lambda value: [{a: value(row[a]) if a in row else None for a in SCORE_AXES} for row in good]  # noqa: E731
        kept = (kept.append_column("scores", pa.array(per_axis(lambda j: j.score), SCORES))
                .append_column("judge_errors", pa.array(per_axis(_error_text), _PER_AXIS_TEXT))
                .append_column("judge_answers", pa.array(per_axis(lambda j: j.raw), _PER_AXIS_TEXT))
                .append_column("judge_failed", pa.array([sum(not j.ok for j in row.values()) for row in good], pa.int32()))
                .append_column("judge_model", pa.array([self.config.backend.model_name] * n, pa.string()))
                .append_column("rubric_id", pa.array([self.rubrics.id] * n, pa.string()))
                .append_column("rubric_hash", pa.array([self.rubrics.sha256] * n, pa.string())))
        down = [(row, reasons) for row, reasons in zip(judged, outage) if reasons]
        rejected = rejected_rows(
            rows.filter(pa.array([not x for x in ok], pa.bool_())), [reasons[0] for _, reasons in down],
            ["; ".join(f"{axis}: {j.detail}"[:300] for axis, j in row.items() if j.reason in TRANSIENT_ERRORS)
             for row, _ in down],
            [to_json({a: _error_text(j) for a, j in row.items()}) for row, _ in down])
        unsent = ("undecodable_image", "missing_image")
        sent = sum(j.reason not in unsent for row in judged for j in row.values())  # transport retries aside
        stats = {**judgement_stats(good), "requests": sent, **backend_stats(self.judge.backend)}
        return Processed(kept, rejected, stats)


def _error_text(judgement: Judgement) -> str | None:
    """What `judge_errors` holds: the reason code, then the message when there is one (a backend's
    message already starts with its code)."""
    if judgement.ok or not judgement.detail:
        return judgement.reason
    return (judgement.detail if judgement.error == "backend_error" else f"{judgement.reason}: {judgement.detail}")[:500]


def judgement_stats(judged: list[dict[str, Judgement]]) -> dict:
    """Per axis over the kept rows: judgements scored, failed and not applicable, the sum of the
    scores (for the mean), and the failures by reason; merged over units by addition."""
    axes = {}
    for axis in SCORE_AXES:
        mine = [row[axis] for row in judged if axis in row]
        scored = [j.score for j in mine if j.ok]
        axes[axis] = {"scored": len(scored), "failed": len(mine) - len(scored),
                      "not_applicable": len(judged) - len(mine), "score_sum": float(sum(scored)),
                      "failed_reasons": dict(collections.Counter(j.reason for j in mine if not j.ok))}
    return {"axes": axes}


def plan(config: ScoreConfig, registry: DatasetRegistry) -> Plan:
    source = registry.resolve(config.dataset, schema="annotated/1")
    judge = config.judge
    rubrics = Rubrics.load(judge.rubrics, SCORE_AXES)  # a bad rubric file fails now, before any work
    provenance = {"backend": judge.backend.kind, "model": judge.backend.model_name, "revision": judge.backend.revision,
                  "rubrics": {"id": rubrics.id, "sha256": rubrics.sha256}, "axes": list(SCORE_AXES),
                  "sampling": dataclasses.asdict(judge.sampling), "image_max_pixels": judge.image_max_pixels,
                  # the engine's context decides which judgements fail as too long
                  "max_model_len": judge.backend.vllm.max_model_len if judge.backend.kind == "vllm" else None}
    return Plan(name=STAGE, schema="scored/1", output=config.output or split_ref(config.dataset)[0],
                make_stage=lambda on_gpu: ScoreStage(config, rubrics, on_gpu), provenance=provenance, source=source,
                columns=ANNOTATED.names, unit_rows=config.unit_rows, summarize=summarize,
                **launch(judge.backend, config.gpu_wait_s))


def summarize(stats: dict[str, Any], counts: Counts, seconds: float) -> dict[str, Any]:
    return {"axes": {}, "requests": 0, **stats, "rows_per_s": round(counts.input / seconds, 2) if seconds else None}


def report(manifest: VersionManifest) -> str:
    """The accounting, then one line per axis: judgements scored / failed / not applicable, the mean
    over scored judgements only, and why judgements failed."""
    s = manifest.stats
    lines = [manifest.counts.line().replace("output", "scored"),
             f"rows/s {s.get('rows_per_s')}  requests {s.get('requests')}  (this run: {s.get('seconds')} s, "
             f"{s.get('resumed_units')} unit(s) resumed)",
             f"| {'axis':<21} | {'scored':>6} | {'failed':>6} | {'n/a':>5} | {'mean':>5} | failed by reason",
             f"|{'-' * 23}|{'-' * 8}|{'-' * 8}|{'-' * 7}|{'-' * 7}|{'-' * 17}"]
    for axis in SCORE_AXES:  # the manifest's JSON has them sorted by name
        if axis not in s.get("axes", {}):
            continue
        a = s["axes"][axis]
        mean = f"{a['score_sum'] / a['scored']:.1f}" if a["scored"] else "-"
        why = ", ".join(f"{k} {v}" for k, v in sorted(a["failed_reasons"].items())) or "-"
        lines.append(f"| {axis:<21} | {a['scored']:>6} | {a['failed']:>6} | {a['not_applicable']:>5} | {mean:>5} | {why}")
    lines.append("failed judgements are null with a reason, never 0; the means leave them out")
    lines += [f"  quarantined {reason}: {n} (the server did not answer; a rerun redoes these units)"
              for reason, n in s.get("quarantine_reasons", {}).items()]
    if s.get("transport_errors"):
        lines.append(transport_errors(s["transport_errors"]))
    return "\n".join(lines)
