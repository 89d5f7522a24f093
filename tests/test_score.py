"""`pipeline score` and `pipeline filter`: the filter rule by hand, then a calibration run with a
scripted judge whose scores each row chooses (fake_judge_server.py markers): ingest -> annotate
(scripted annotator) -> score -> filter (through the CLI) -> tokenize -> report in a browser."""

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pyarrow as pa
import pytest

import pipeline.annotate
import pipeline.filter
import pipeline.score
import pipeline.tokenize
from annotators import AnnotatorConfig, BackendConfig, JudgeConfig
from annotators.judge import Judge, JudgeItem, Rubrics
from annotators.openai_backend import OpenAIConfig
from pipeline.annotate import AnnotateConfig
from pipeline.filter import FilterConfig, FilterStage, parse_thresholds, scored_input, verdict
from pipeline.registry import DatasetRegistry
from pipeline.report import ReportConfig, write_report
from pipeline.run import run_stage
from pipeline.score import ScoreConfig, report
from pipeline.tokenize import TokenizeConfig
from schemas import SCORE_AXES, SCORED
from tests.helpers import SERVER, cli, free_port, ingest, wait_http

JUDGE_SERVER = Path(__file__).parent / "fake_judge_server.py"
THRESHOLDS = ["instruction_following=50", "reasoning_following=60", "consistency=40", "quality=30"]
MAX_FAILED = 1
# Scores with no marker (fake_judge_server.BASE): instruction 75, reasoning 65, consistency 85, quality 55.
# (task, category, judge markers, the filter's verdict with THRESHOLDS and MAX_FAILED)
PLAN = [
    ("edit", "objects", "", None),
    ("edit", "objects", "[judge:=59@reasoning_following]", "low_reasoning_following"),
    ("edit", "objects", "[judge:=60@reasoning_following]", None),  # the threshold itself passes
    ("edit", "scenes", "[judge:=39@consistency]", "low_consistency"),
    ("generate", "scenes", "", None),  # consistency does not apply: not failed, not compared
    ("generate", "scenes", "[judge:=10@quality]", "low_quality"),
    ("edit", "scenes", "[judge:garbage@consistency]", None),  # one failed judgement <= MAX_FAILED, never a 0
    ("edit", "objects", "[judge:garbage]", "judge_failed"),  # four failed judgements
    ("edit", "objects", "[judge:reject@quality]", None),  # HTTP 400: a failed judgement (client_error)
    ("generate", "objects", "[judge:=20@instruction_following] [judge:=30@reasoning_following]",
     "low_instruction_following"),  # below on two axes: the first names the reason, the message both
    ("edit", "objects", "[judge:down@quality]", "outage"),  # 503 after retries: quarantined by score itself
]


def test_the_filter_rule_by_hand():
    cfg = FilterConfig(dataset="d", min=parse_thresholds(THRESHOLDS), max_failed=MAX_FAILED)
    assert cfg.min == {"instruction_following": 50.0, "reasoning_following": 60.0, "consistency": 40.0, "quality": 30.0}
    full = {"instruction_following": 75.0, "reasoning_following": 65.0, "consistency": 85.0, "quality": 55.0}
    assert verdict(full, 0, cfg) == (None, "")
    assert verdict({**full, "quality": 29.5}, 0, cfg) == ("low_quality", "quality 29.5 < 30")
    assert verdict({**full, "consistency": None}, 1, cfg) == (None, "")  # failed: not compared, counted
    assert verdict({**full, "consistency": None, "quality": None}, 2, cfg)[0] == "judge_failed"
    assert verdict({**full, "instruction_following": 1.0, "quality": 2.0}, 0, cfg) == (
        "low_instruction_following", "instruction_following 1 < 50; quality 2 < 30")
    # the stage over a batch: every row comes out once, kept or quarantined, also when none is cut
    full_row = {"sample_id": "a", "task": "edit", "instruction": "x", "reasoning": "y", "category": None,
                "scores": full, "judge_failed": 0, "judge_errors": dict.fromkeys(SCORE_AXES),
                "judge_answers": dict.fromkeys(SCORE_AXES, "Score: 1")}
    rows = pa.Table.from_pylist([full_row, {**full_row, "sample_id": "b", "scores": {**full, "quality": 3.0}}],
                                schema=SCORED)
    kept, rejected, stats = FilterStage(cfg).process(rows)
    assert kept["sample_id"].to_pylist() == ["a"] and rejected["reason"].to_pylist() == ["low_quality"]
    assert json.loads(rejected["record"][0].as_py())["scores"]["quality"] == 3.0 and stats["below_threshold"]["quality"] == 1
    kept, rejected, _ = FilterStage(cfg).process(rows.slice(0, 1))
    assert (kept.num_rows, rejected.num_rows) == (1, 0)
    with pytest.raises(ValueError, match="unknown score axis bogus"):
        FilterConfig(dataset="d", min={"bogus": 1})
    with pytest.raises(ValueError, match="0 to 100"):
        FilterConfig(dataset="d", min={"quality": 140})
    with pytest.raises(ValueError, match="is not AXIS=N"):
        parse_thresholds(["quality"])
    with pytest.raises(ValueError, match=r"--min quality is given twice \(90 and 10\)"):
        parse_thresholds(["quality=90", "consistency=5", "quality=10"])
    # an image that does not decode fails its item's judgements, unsent (no backend is even needed)
    judge = Judge(backend=None, rubrics=Rubrics.load("score-v1", SCORE_AXES))
    [broken] = judge.judge([JudgeItem("s", "generate", "draw", "plan", b"not an image")])
    assert set(broken) == {"instruction_following", "reasoning_following", "quality"}  # no consistency
    assert all(j.score is None and j.error == "undecodable_image" for j in broken.values())
    # the rubric is filled in one pass: an instruction quoting "{reasoning}" does not pull the trace in
    item = JudgeItem("s", "generate", "write {reasoning} on a sign", "SECRET PLAN", b"")
    text = judge.request(item, "quality", urls={"output": "data:,"}).messages[1]["content"][-1]["text"]
    assert "write {reasoning} on a sign" in text and "SECRET PLAN" not in text
    # one judge, two rubric sets: a rubric file must define exactly the axes its caller grades
    assert list(Rubrics.load("score-v1", SCORE_AXES).dimensions) == list(SCORE_AXES)
    with pytest.raises(ValueError, match="exactly the dimensions"):
        Rubrics.load("judge-v1", SCORE_AXES)


@pytest.fixture(scope="module")
def servers():
    """(annotator URL, judge URL): the scripted annotator and the scripted judge."""
    procs, urls = [], []
    for script in (SERVER, JUDGE_SERVER):
        port = free_port()
        procs.append(subprocess.Popen([sys.executable, str(script), "--port", str(port)]))
        urls.append(f"http://127.0.0.1:{port}")
        wait_http(f"{urls[-1]}/health", 30, procs[-1])
    yield urls
    for proc in procs:
        proc.terminate()
        proc.wait()


def judge_requests(url: str) -> int:
    return json.loads(urllib.request.urlopen(f"{url}/stats").read())["requests"]


def test_scores_and_thresholds_cut_exactly_the_rows_they_should(ray_local, demo_dir, servers, magvit_dir,
                                                                 llada_tokenizer_dir, registry_root, browser,
                                                                 tmp_path, capsys):
    annotator, judge = servers
    rows = [json.loads(line) for line in (demo_dir / "data.jsonl").read_text().splitlines()]
    edits, gens = [r for r in rows if r["task"] == "edit"], [r for r in rows if r["task"] == "generate"]
    lines = []
    for i, (task, category, markers, _) in enumerate(PLAN):
        source = (edits if task == "edit" else gens)[i % 4]
        lines.append(json.dumps({**source, "category": category,
                                 "instruction": f"Row {i}: {source['instruction']} {markers}".strip()}))
    (demo_dir / "calibration.jsonl").write_text("\n".join(lines))
    raw = ingest([demo_dir / "calibration.jsonl"], registry_root, dataset="cal")
    fake = BackendConfig(kind="openai", model="fake", openai=OpenAIConfig(base_url=f"{annotator}/v1"))
    run_stage(pipeline.annotate.plan, AnnotateConfig(dataset="cal", registry=registry_root,
                                                     annotator=AnnotatorConfig(backend=fake)), progress=False)
    registry = DatasetRegistry(registry_root)
    by_row = {int(r["instruction"].split(":")[0][4:]): r["sample_id"]
              for r in registry.read_table(raw, ["sample_id", "instruction"]).to_pylist()}

    server = OpenAIConfig(base_url=f"{judge}/v1", max_retries=1, backoff_base_s=0.01)
    cfg = ScoreConfig(dataset="cal", registry=registry_root, unit_rows=4, judge=JudgeConfig(
        rubrics="score-v1", backend=BackendConfig(kind="openai", model="judge", openai=server)))
    before = judge_requests(judge)
    scored = run_stage(pipeline.score.plan, cfg, progress=False)
    # 8 edits x 4 axes + 3 generations x 3 axes; the outage row's quality request is sent twice (one retry)
    assert judge_requests(judge) - before == 8 * 4 + 3 * 3 + 1
    assert (scored.counts.input, scored.counts.output, scored.counts.quarantined) == (11, 10, 1)
    assert scored.schema == "scored/1" and scored.stats["quarantine_reasons"] == {"server_error": 1}
    lineage = scored.lineage["score"]
    assert lineage["model"] == "judge" and lineage["rubrics"] == {"id": "score-v1",
                                                                   "sha256": Rubrics.load("score-v1", SCORE_AXES).sha256}
    got = {r["sample_id"]: r for r in registry.read_table(scored).to_pylist()}
    base = {"instruction_following": 75.0, "reasoning_following": 65.0, "consistency": 85.0, "quality": 55.0}
    row = lambda i: got[by_row[i]]  # noqa: E731
    assert row(0)["scores"] == base and row(0)["judge_failed"] == 0
    assert "Score: 75" in row(0)["judge_answers"]["instruction_following"]  # the judge's words are kept
    assert row(4)["scores"] == {**base, "consistency": None} and row(4)["judge_errors"]["consistency"] is None
    assert row(6)["scores"]["consistency"] is None and row(6)["judge_errors"]["consistency"] == "no_score"
    assert row(7)["scores"] == dict.fromkeys(SCORE_AXES) and row(7)["judge_failed"] == 4  # failed, never 0
    assert row(8)["judge_errors"]["quality"].startswith("client_error: 400")
    assert by_row[10] not in got
    axes = scored.stats["axes"]
    assert {a: (axes[a]["scored"], axes[a]["failed"], axes[a]["not_applicable"]) for a in SCORE_AXES} == {
        "instruction_following": (9, 1, 0), "reasoning_following": (9, 1, 0), "consistency": (5, 2, 3),
        "quality": (8, 2, 0)}
    assert axes["consistency"]["failed_reasons"] == {"no_score": 2}
    assert axes["quality"]["failed_reasons"] == {"no_score": 1, "client_error": 1}
    # the means leave failures out: the reasoning mean is over the nine scored rows
    assert axes["reasoning_following"]["score_sum"] == 65 * 6 + 59 + 60 + 30
    [quarantined] = registry.read_table(scored, quarantine=True).to_pylist()
    assert quarantined["sample_id"] == by_row[10] and quarantined["reason"] == "server_error"

    # the outage's unit (rows 8-10) is not done: a rerun redoes it alone, and the rest resumes
    before = judge_requests(judge)
    capsys.readouterr()
    again = run_stage(pipeline.score.plan, cfg, progress=False)
    assert "2 of 3 units already done" in capsys.readouterr().out
    assert judge_requests(judge) - before == 4 + 3 + 5
    assert again.version == scored.version  # the same answers again: the same content
    print(report(scored))

    out = cli("filter", f"cal@{scored.version}", "--registry", registry_root, "--max-failed", MAX_FAILED,
              "--no-progress", *(w for t in THRESHOLDS for w in ("--min", t)), ray_address=ray_local)
    print(out.stdout)
    kept = registry.resolve(f"cal@{out.stdout.split()[-1]}")
    expected = {by_row[i]: fate for i, (*_, fate) in enumerate(PLAN) if fate != "outage"}
    assert (kept.counts.input, kept.counts.output, kept.counts.quarantined) == (10, 5, 5)
    assert kept.stage == "filter" and kept.schema == "scored/1" and kept.parent == scored.ref
    assert kept.lineage["filter"]["min"] == parse_thresholds(THRESHOLDS) and kept.lineage["filter"]["max_failed"] == 1
    assert sorted(registry.read_table(kept, ["sample_id"])["sample_id"].to_pylist()) == sorted(
        s for s, fate in expected.items() if fate is None)
    cut = {r["sample_id"]: r for r in registry.read_table(kept, quarantine=True).to_pylist()}
    assert {s: r["reason"] for s, r in cut.items()} == {s: fate for s, fate in expected.items() if fate}
    assert cut[by_row[9]]["message"] == "instruction_following 20 < 50; reasoning_following 30 < 60"
    assert json.loads(cut[by_row[1]]["record"])["scores"]["reasoning_following"] == 59  # scores travel along
    assert "low_reasoning_following: 1" in out.stdout and "judge_failed: 1" in out.stdout
    # `cal` alone means the newest *score* version, never the filter's output
    assert scored_input(registry, "cal").ref == scored.ref
    # two rules that keep the same rows are two versions, each with its own rule in the lineage
    loose = [run_stage(pipeline.filter.plan, FilterConfig(dataset="cal", registry=registry_root, max_failed=4, min=floor), progress=False)
             for floor in ({}, {"quality": 0})]
    assert [m.counts.output for m in loose] == [10, 10] and loose[0].version != loose[1].version
    assert [m.lineage["filter"]["min"] for m in loose] == [{}, {"quality": 0.0}]

    tokenized = run_stage(pipeline.tokenize.plan, TokenizeConfig(dataset=kept.ref, registry=registry_root, image_tokenizer=str(magvit_dir),
                                            text_tokenizer=str(llada_tokenizer_dir), resolution=64), progress=False)
    assert tokenized.parent == kept.ref and tokenized.counts.output == 5
    carried = {r["sample_id"]: r["scores"] for r in registry.read_table(tokenized, ["sample_id", "scores"]).to_pylist()}
    assert carried == {s: got[s]["scores"] for s in carried} and len(carried) == 5

    page = write_report(ReportConfig(dataset=f"cal@{tokenized.version}", registry=registry_root,
                                     out=str(tmp_path / "report.html"), decode_codes=False))
    browser.get(page.as_uri())
    counts = {e.get_attribute("data-count"): int(e.text)
              for e in browser.find_elements("css selector", "#scores [data-count]")}
    assert counts["scored-rows"] == 10 and counts["judge-failed"] == 1 + 4 + 1
    assert [counts[f"scored-{a}"] for a in SCORE_AXES] == [9, 9, 5, 8]
    assert [counts[f"below-{a}"] for a in SCORE_AXES] == [1, 2, 1, 1]
    cuts = {e.find_element("xpath", "ancestor::figure").get_attribute("data-axis"): e.get_attribute("data-cut")
            for e in browser.find_elements("css selector", "figure[data-kind=scores] line[data-cut]")}
    assert cuts == {"instruction_following": "50", "reasoning_following": "60", "consistency": "40", "quality": "30"}
    bins = [int(e.get_attribute("data-n")) for e in browser.find_elements(
        "css selector", "figure[data-axis=reasoning_following] rect[data-bin]")]
    assert sum(bins) == 9 and bins[6] == 7 and bins[5] == 1 and bins[3] == 1  # 60-70: 65 x6 and 60; 59; 30
    judged = browser.find_elements("css selector", ".card .judge li")
    assert judged and any("Score:" in li.text for li in judged)
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []
    shot = tmp_path / "score-section.png"
    section = browser.find_element("css selector", "#scores")
    browser.set_window_size(1280, section.rect["y"] + section.rect["height"] + 200)  # all of it in the viewport
    section.screenshot(str(shot))
    browser.set_window_size(1280, 2000)
    print(f"score section screenshot: {shot}")

    # the filter version's own page: its diff against the scored parent is what the filter removed
    page = write_report(ReportConfig(dataset=kept.ref, registry=registry_root, out=str(tmp_path / "filter.html")))
    browser.get(page.as_uri())
    diff = {tr.find_elements("tag name", "td")[0].text: int(tr.find_elements("tag name", "td")[1].text)
            for tr in browser.find_elements("css selector", "#diff tbody tr")}
    assert diff == {"added": 0, "removed": 5, "changed": 0, "unchanged": 5}
