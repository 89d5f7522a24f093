"""`pipeline filter`: a scored version -> a new scored version of the rows that pass thresholds on
the judge's scores; every other row is quarantined with why, so in = out + quarantined holds.

The rule (recorded in the lineage with the thresholds):

- a row with more failed judgements than `max_failed` is quarantined as `judge_failed`;
- otherwise a row with a scored axis below its `--min` threshold is quarantined as `low_<axis>`
  (the first such axis in SCORE_AXES order; the message lists every axis under its threshold);
- an axis whose judgement failed, or that does not apply (consistency for a generation), is not
  compared: it was never scored, so it is never taken as 0. `max_failed` is what bounds rows the
  judge could not grade.

Quarantined rows keep their scores, the judge's answers and the row's text in the quarantine
record, so `pipeline report` shows what was cut and why. The cut runs as plain CPU tasks over row
ranges (no model), and resumes from the ranges already done.
"""

from __future__ import annotations

import dataclasses
import json

import pyarrow as pa

from annotators.annotator import speed_only
from pipeline.registry import DatasetRegistry, split_ref
from pipeline.stage import Plan, Processed, Resources, Stage, rejected_rows
from schemas import SCORE_AXES, SCORED, VersionManifest

STAGE = "filter"
RULE = ("quarantine as judge_failed when judge_failed > max_failed; else as low_<axis> for the first axis "
        "(in SCORE_AXES order) scored below its min; failed and not-applicable axes are never compared")


@dataclasses.dataclass(kw_only=True)
class FilterConfig:
    dataset: str  # NAME[@VERSION|@TAG] of a scored version
    min: dict[str, float] = dataclasses.field(default_factory=dict)  # axis -> the lowest score kept
    max_failed: int = 0  # failed judgements a row may have and still pass
    output: str | None = None  # dataset name of the result; default: the input's name
    unit_rows: int = 256  # rows per CPU task, read whole: each copies its rows' images into the new shards
    registry: str | None = speed_only(None)
    ray_address: str | None = speed_only(None)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.min) - set(SCORE_AXES))
        if unknown:
            raise ValueError(f"unknown score axis {', '.join(unknown)}; the axes are {', '.join(SCORE_AXES)}")
        for axis, value in self.min.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 100:
                raise ValueError(f"--min {axis}={value!r}: a threshold is a number from 0 to 100")
        self.min = {axis: float(self.min[axis]) for axis in SCORE_AXES if axis in self.min}
        if not isinstance(self.max_failed, int) or self.max_failed < 0:
            raise ValueError(f"max_failed must be a whole number >= 0, not {self.max_failed!r}")


def parse_thresholds(pairs: list[str]) -> dict[str, float]:
    """["quality=50", "consistency=40.5"] -> {"quality": 50.0, "consistency": 40.5}."""
    out = {}
    for pair in pairs:
        axis, _, value = pair.partition("=")
        try:
            threshold = float(value)
        except ValueError:
            raise ValueError(f"--min {pair!r} is not AXIS=N (e.g. --min reasoning_following=60)") from None
        if axis.strip() in out:  # which one was meant? not the last by accident
            raise ValueError(f"--min {axis.strip()} is given twice ({out[axis.strip()]:g} and {threshold:g}); give it once")
        out[axis.strip()] = threshold
    return out


def verdict(scores: dict[str, float | None], failed: int, config: FilterConfig) -> tuple[str | None, str]:
    """One row -> (None, "") when it passes, else (reason, message)."""
    if failed > config.max_failed:
        return "judge_failed", f"{failed} failed judgement(s) > max_failed {config.max_failed}"
    low = [(axis, scores[axis], floor) for axis, floor in config.min.items()
           if scores[axis] is not None and scores[axis] < floor]
    if not low:
        return None, ""
    return f"low_{low[0][0]}", "; ".join(f"{axis} {score:g} < {floor:g}" for axis, score, floor in low)


class FilterStage(Stage):
    name = STAGE
    output_schema = SCORED

    def __init__(self, config: FilterConfig):
        self.config = config
        self.batch_size = config.unit_rows
        self.resources = Resources(num_cpus=1)

    def process(self, rows: pa.Table) -> Processed:
        scores, failed = rows["scores"].to_pylist(), rows["judge_failed"].to_pylist()
        verdicts = [verdict(s, f, self.config) for s, f in zip(scores, failed)]
        passed = pa.array([reason is None for reason, _ in verdicts], pa.bool_())
        cut = pa.array([i for i, (reason, _) in enumerate(verdicts) if reason is not None], pa.int64())
        record_columns = ["task", "instruction", "category", "reasoning", "scores", "judge_errors", "judge_answers"]
        records = rows.select(record_columns).take(cut).to_pylist()
        rejected = rejected_rows(rows.take(cut), [verdicts[i][0] for i in cut.to_pylist()],
                                 [verdicts[i][1] for i in cut.to_pylist()], [json.dumps(r, sort_keys=True) for r in records])
        below = {axis: sum(1 for s in scores if s[axis] is not None and s[axis] < floor)
                 for axis, floor in self.config.min.items()}
        return Processed(rows.filter(passed), rejected, {"below_threshold": below})


def scored_input(registry: DatasetRegistry, ref: str) -> VersionManifest:
    """NAME alone means the newest *score* version, never an earlier filter's output (filtering that
    again could never bring back what the first cut removed); NAME@VERSION is taken as given."""
    dataset, selector = split_ref(ref)
    if selector is not None:
        return registry.resolve(ref, schema="scored/1")
    scored = [m for m in registry.versions(dataset) if m.stage == "score"]
    if not scored:
        raise ValueError(f"dataset {dataset!r} has no version made by `pipeline score` in registry {registry.root}")
    return scored[-1]


def plan(config: FilterConfig, registry: DatasetRegistry) -> Plan:
    rule = {"min": config.min, "max_failed": config.max_failed, "rule": RULE}
    return Plan(name=STAGE, schema="scored/1", output=config.output or split_ref(config.dataset)[0],
                make_stage=lambda on_gpu: FilterStage(config), provenance=rule,
                source=scored_input(registry, config.dataset), columns=SCORED.names, unit_rows=config.unit_rows,
                summarize=lambda stats, counts, seconds: {"below_threshold": {}, **stats}, rule=rule)


def report(manifest: VersionManifest) -> str:
    s, rule = manifest.stats, manifest.lineage["filter"]
    floors = {axis: rule["min"][axis] for axis in SCORE_AXES if axis in rule["min"]}  # the JSON sorted them by name
    thresholds = ", ".join(f"{axis} >= {floor:g}" for axis, floor in floors.items()) or "none"
    lines = [manifest.counts.line().replace("output", "kept"),
             f"thresholds: {thresholds}; max_failed {rule['max_failed']}  (this run: {s['seconds']} s, "
             f"{s['resumed_units']} unit(s) resumed)"]
    lines += [f"  quarantined {reason}: {n}" for reason, n in s["quarantine_reasons"].items()]
    lines += [f"  rows with {axis} below {floor:g}: {s['below_threshold'].get(axis, 0)} (a row may be below on "
              "several axes)" for axis, floor in floors.items()]
    return "\n".join(lines)
