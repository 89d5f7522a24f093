"""`pipeline report`: a real chain (ingest with broken rows -> annotate with faults -> tokenize), the
page written by the CLI, opened in headless Chromium: no console errors, not blank, every count
equal to the manifests', filters that filter."""

import io
import json
import shutil
import subprocess
import sys
from collections import Counter

import pytest

import pipeline.annotate
import pipeline.ingest
import pipeline.tokenize
from annotators import AnnotatorConfig, BackendConfig
from pipeline.registry import DatasetRegistry
from pipeline.run import run_stage
from tests.helpers import BIN, SERVER, free_port, wait_http


@pytest.fixture(scope="module")
def chain(ray_local, demo_dir, magvit_dir, llada_tokenizer_dir, tmp_path_factory):
    """raw (2 broken lines, 1 duplicate) -> annotated (2 traces that always fail) -> tokenized."""
    from annotators.openai_backend import OpenAIConfig
    from pipeline.annotate import AnnotateConfig
    from pipeline.ingest import IngestConfig
    from pipeline.tokenize import TokenizeConfig

    src = tmp_path_factory.mktemp("report-src")
    shutil.copytree(demo_dir, src, dirs_exist_ok=True)
    lines = (src / "data.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    rows[0]["instruction"] += " [fault:empty]"
    rows[1]["instruction"] += " [fault:refusal]"
    extra = ['{"task": "edit", broken json', json.dumps({**rows[2], "output_image": "missing.png"}), lines[3]]
    (src / "data.jsonl").write_text("\n".join([json.dumps(r) for r in rows] + extra) + "\n")

    root = str(tmp_path_factory.mktemp("report-registry"))
    port = free_port()
    server = subprocess.Popen([sys.executable, str(SERVER), "--port", str(port)])
    try:
        wait_http(f"http://127.0.0.1:{port}/health", 30, server)
        raw = run_stage(pipeline.ingest.plan, IngestConfig(sources=[str(src / "data.jsonl")], dataset="rep",
                                                           registry=root), progress=False)
        fake = BackendConfig(kind="openai", model="fake", openai=OpenAIConfig(base_url=f"http://127.0.0.1:{port}/v1"))
        annotated = run_stage(pipeline.annotate.plan, AnnotateConfig(
            dataset=raw.ref, registry=root, annotator=AnnotatorConfig(backend=fake, max_attempts=2)), progress=False)
    finally:
        server.terminate()
    tokenized = run_stage(pipeline.tokenize.plan, TokenizeConfig(
        dataset=annotated.ref, registry=root, image_tokenizer=str(magvit_dir), text_tokenizer=str(llada_tokenizer_dir),
        resolution=64), progress=False)
    assert (raw.counts.quarantined, raw.counts.duplicates, annotated.counts.quarantined) == (2, 1, 2)
    out = tmp_path_factory.mktemp("report") / "report.html"
    done = subprocess.run([BIN / "pipeline", "report", tokenized.ref, "--out", str(out), "--registry", root,
                           "--cards", "10"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"report: {out}" in done.stdout
    return root, [raw, annotated, tokenized], out


def test_report_is_self_contained(chain):
    html = chain[2].read_text()
    # nothing to fetch: no http(s) URLs in src/href, images inline
    assert "src=\"http" not in html and "href=\"http" not in html and "<link rel=\"stylesheet\"" not in html
    # per card: output and decoded-from-codes always, the input image for edits
    assert html.count('alt="decoded from codes"') == html.count('alt="output"') == 10
    assert html.count("data:image/png;base64,") == 20 + html.count('alt="input"')


def test_report_opens_in_chromium_and_counts_match_manifests(chain, browser, tmp_path):
    from PIL import Image
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    root, manifests, out = chain
    browser.get(out.as_uri())
    assert browser.title.startswith("paraforge report")
    errors = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    assert errors == []

    shot = Image.open(io.BytesIO(browser.get_screenshot_as_png())).convert("RGB")
    shot.save(tmp_path / "report.png")
    assert len(shot.getcolors(1 << 24)) > 50  # text, charts and pictures, not a blank page

    by_version = {m.version: m for m in manifests}
    counted = browser.find_elements(By.CSS_SELECTOR, "[data-count][data-version]")
    assert len(counted) == 4 * len(manifests)
    for cell in counted:
        m = by_version[cell.get_attribute("data-version")]
        assert int(cell.text) == getattr(m.counts, cell.get_attribute("data-count")), cell.get_attribute("outerHTML")
    assert all(c.get_attribute("data-reconciles") == "true"
               for c in browser.find_elements(By.CSS_SELECTOR, "[data-reconciles]"))
    total = browser.find_element(By.CSS_SELECTOR, '[data-count="quarantined-total"]').text
    assert int(total) == sum(m.counts.quarantined for m in manifests)
    assert int(browser.find_element(By.CSS_SELECTOR, '[data-count="rows"]').text) == manifests[2].counts.output

    # quarantine bars equal each manifest's reasons; rows in the table equal the quarantine shards
    for bar in browser.find_elements(By.CSS_SELECTOR, '[data-kind="quarantine"]'):
        m = by_version[bar.get_attribute("data-version")]
        assert int(bar.text) == m.stats["quarantine_reasons"][bar.get_attribute("data-key")]
    bars = browser.find_elements(By.CSS_SELECTOR, '[data-kind="quarantine"]')
    assert {b.get_attribute("data-key") for b in bars} >= {"bad_json", "file_not_found"}
    registry = DatasetRegistry(root)
    tokenized = registry.read_table(manifests[2], ["sample_id"])["sample_id"].to_pylist()
    annotated = {r["sample_id"]: r["category"] for r in registry.read_table(manifests[1], ["sample_id", "category"]).to_pylist()}
    categories = Counter(annotated[s] for s in tokenized)
    for bar in browser.find_elements(By.CSS_SELECTOR, '[data-kind="category"]'):
        assert int(bar.text) == categories[bar.get_attribute("data-key")]

    # the reason filter shows exactly that reason's rows; the category filter that category's cards
    reasons = Select(browser.find_element(By.CSS_SELECTOR, 'select[data-filter="reason"]'))
    reasons.select_by_value("bad_json")
    visible = [r for r in browser.find_elements(By.CSS_SELECTOR, "#quarantine tbody tr") if r.is_displayed()]
    assert len(visible) == manifests[0].stats["quarantine_reasons"]["bad_json"]
    assert all(r.get_attribute("data-reason") == "bad_json" for r in visible)
    cards = browser.find_elements(By.CSS_SELECTOR, ".cards .card")
    assert len(cards) == 10
    wanted = cards[0].get_attribute("data-category")
    Select(browser.find_element(By.CSS_SELECTOR, 'select[data-filter="category"]')).select_by_value(wanted)
    shown = [c for c in cards if c.is_displayed()]
    assert 0 < len(shown) == sum(c.get_attribute("data-category") == wanted for c in cards)
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []


def test_report_diff_against_parent_and_any_version(chain, tmp_path):
    from pipeline.report import ReportConfig, collect, write_report

    root, (raw, annotated, tokenized), _ = chain
    data = collect(ReportConfig(dataset=annotated.ref, registry=root, cards=2))
    assert data.diff["removed"] == annotated.counts.quarantined and data.diff["added"] == 0
    assert data.rows.num_rows == annotated.counts.output and "reasoning" in data.rows.column_names
    page = write_report(ReportConfig(dataset=raw.ref, registry=root, against=tokenized.ref, cards=2,
                                     out=str(tmp_path / "raw.html"))).read_text()
    assert f"Diff: {tokenized.ref} &rarr; {raw.ref}" in page
    assert "no parent version" in write_report(ReportConfig(dataset=raw.ref, registry=root, cards=0,
                                                            out=str(tmp_path / "r.html"))).read_text()
