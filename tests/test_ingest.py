import codecs
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.images import stable_message
from pipeline.ingest import IngestConfig, accounting_table, ingest_batch
from pipeline.registry import DatasetRegistry
from pipeline.sources import read_source
from tests import corpus
from tests.helpers import ingest


def test_broken_corpus_is_accounted_for_exactly(ray_local, tmp_path, registry_root):
    manifest_path, expected = corpus.build(tmp_path / "src")
    assert len(expected["verdicts"]) - 1 >= 30  # one clean row, then one line per kind of broken/odd input
    assert len(expected["reasons"]) >= 18
    m = ingest([manifest_path], registry_root)
    print(accounting_table(m))
    assert (m.counts.input, m.counts.output, m.counts.quarantined, m.counts.duplicates) == (
        expected["input"], expected["output"], expected["quarantined"], expected["duplicates"])
    assert m.counts.reconciles()
    assert m.stats["quarantine_reasons"] == expected["reasons"]

    registry = DatasetRegistry(registry_root)
    quarantine = registry.read_table(m, quarantine=True).to_pylist()
    verdicts = {int(r["source_ref"].split(":")[1]): r["reason"] for r in quarantine}
    for lineno, verdict in enumerate(expected["verdicts"], start=1):
        if verdict not in ("ok", "duplicate"):
            assert verdicts[lineno] == verdict, (lineno, verdicts.get(lineno))
    assert all(r["stage"] == "ingest" and r["message"] for r in quarantine)

    rows = {r["instruction"]: r for r in registry.read_table(m).to_pylist()}
    for row in rows.values():  # every accepted image decodes to 8-bit RGB
        for key in ("input_image", "output_image"):
            if row[key] is not None:
                assert Image.open(io.BytesIO(row[key])).mode == "RGB"
    deep = np.asarray(Image.open(io.BytesIO(rows["16-bit target"]["output_image"])))
    assert deep.min() == deep.max() == 128  # 32768 / 65535 scaled to 8 bits, not clipped to 255
    assert np.asarray(Image.open(io.BytesIO(rows["palette target"]["output_image"])))[0, 0].tolist() == [255] * 3
    assert np.asarray(Image.open(io.BytesIO(rows["transparent target"]["output_image"])))[0, 0].tolist() == [255] * 3
    rotated = rows["rotated target"]
    assert (rotated["output_width"], rotated["output_height"]) == (128, 64)  # EXIF orientation applied
    assert m.stats["images_converted"] == 6
    gen = rows["a red square"]
    assert gen["task"] == "generate" and gen["input_image"] is None and gen["category"] == "shapes"
    assert json.loads(gen["meta"]) == {"source_id": 7}


def test_every_case_of_the_five_format_corpus_meets_its_fate(ray_local, tmp_path, registry_root):
    """One ingest over the JSONL corpus and its Parquet, Hugging Face, folder and WebDataset
    siblings: every case (a source reference) is kept, dropped as a repeat, or quarantined with the
    reason written beside it, and in = out + quarantined + duplicates holds over the whole run."""
    jsonl, expected = corpus.build(tmp_path / "src")
    sources, cases = corpus.build_formats(tmp_path / "src")
    cases = [(str(jsonl), f"{jsonl.name}:{i}", v) for i, v in enumerate(expected["verdicts"], start=1)] + cases
    assert len(cases) - len(expected["verdicts"]) >= 60  # new cases beyond the JSONL corpus
    m = ingest([jsonl, *sources], registry_root, dataset="five")
    registry = DatasetRegistry(registry_root)
    fates = {(r["source"], r["source_ref"]): "ok" for r in registry.read_table(m, ["source", "source_ref"]).to_pylist()}
    fates.update({(r["source"], r["source_ref"]): r["reason"] for r in registry.read_table(m, quarantine=True).to_pylist()})
    formats = {str(jsonl): "jsonl", **{str(s): f for s, f in zip(sources, ("parquet", "hf", "folder", "webdataset"))}}
    table: dict[str, dict[str, int]] = {}
    print(f"{'format':<10}  {'case':<28}  {'expected':<22}  got")
    wrong = []
    for source, ref, fate in cases:
        got = fates.pop((source, ref), "duplicate")  # a repeat leaves no row: counted, not stored
        print(f"{formats[source]:<10}  {ref[:28]:<28}  {fate:<22}  {got}")
        row = table.setdefault(fate, {})
        row[formats[source]] = row.get(formats[source], 0) + 1
        if got != fate:
            wrong.append((formats[source], ref, fate, got))
    print(accounting_table(m))
    names = ["jsonl", "parquet", "hf", "folder", "webdataset"]
    print(f"{'fate':<22}" + "".join(f"{n:>11}" for n in names))
    for fate in sorted(table, key=lambda f: (f not in ("ok", "duplicate"), f)):
        print(f"{fate:<22}" + "".join(f"{table[fate].get(n, 0):>11}" for n in names))
    assert wrong == [] and fates == {}  # every case as expected, and no row that is not a case
    assert m.counts.reconciles() and m.counts.input == len(cases)
    assert m.counts.duplicates == sum(1 for *_, f in cases if f == "duplicate")
    assert all(n in formats.values() for n in names)


def test_quarantine_messages_are_the_same_on_a_rerun_and_from_another_folder(ray_local, tmp_path):
    """Quarantine rows are hashed into the version id: a message holding an object repr, a memory
    address or the source's absolute folder would give a rerun over the same source a new version."""
    manifest_path, _ = corpus.build(tmp_path / "a" / "src")
    first = ingest([manifest_path], str(tmp_path / "registry-1"))
    rerun = ingest([manifest_path], str(tmp_path / "registry-2"))  # a fresh registry: nothing reused
    assert rerun.version == first.version
    quarantine = DatasetRegistry(str(tmp_path / "registry-1")).read_table(first, quarantine=True)
    messages = dict(zip(quarantine["source_ref"].to_pylist(), quarantine["message"].to_pylist()))
    assert {"undecodable_image", "not_a_file", "path_outside_source"} <= set(quarantine["reason"].to_pylist())
    for message in messages.values():  # "0xff" (a byte the UTF-8 decoder refused) is content, not an address
        assert not re.search(r"object at| at 0x|0x[0-9a-fA-F]{8,}|" + re.escape(str(tmp_path)), message), message

    # The same corpus in another folder gives the same messages. Its version id differs by design:
    # raw and quarantine rows keep `source`, the source's location as given.
    moved_path, _ = corpus.build(tmp_path / "b" / "src")
    moved = ingest_batch(next(read_source(str(moved_path))), IngestConfig(sources=[], dataset="x")).rejected
    assert dict(zip(moved["source_ref"].to_pylist(), moved["message"].to_pylist())) == messages


def test_stable_message_leaves_out_what_changes_between_runs():
    e = OSError("cannot read <_io.BytesIO object at 0x7f3a2b1c4d50> from /data/src/img/a.png, handle 0x55d0aabbccdd")
    assert stable_message(e, "/data/src/") == "OSError: cannot read from img/a.png, handle <address>"
    assert stable_message(KeyError()) == "KeyError"


def test_thresholds_are_configurable(ray_local, tmp_path, registry_root):
    manifest_path, _ = corpus.build(tmp_path / "src")
    m = ingest([manifest_path], registry_root, min_side=4, max_aspect_ratio=10.0)
    assert "image_too_small" not in m.stats["quarantine_reasons"]
    assert "extreme_aspect_ratio" not in m.stats["quarantine_reasons"]


def test_ingest_batch_is_a_pure_function_without_ray(demo_dir):
    refs = next(read_source(str(demo_dir / "data.jsonl")))
    config = IngestConfig(sources=[], dataset="x")
    kept, rejected, stats = ingest_batch(refs, config)
    assert (kept.num_rows, rejected.num_rows, stats) == (refs.num_rows, 0, {"images_converted": 0})
    assert kept["sample_id"].to_pylist() == ingest_batch(refs, config).kept["sample_id"].to_pylist()


def test_reingest_gives_the_same_version(ray_local, demo_dir, registry_root):
    first = ingest([demo_dir / "data.jsonl"], registry_root)
    second = ingest([demo_dir / "data.jsonl"], registry_root)
    assert second.version == first.version
    assert second.created_at == first.created_at  # the published version was kept, not rewritten
    assert len(DatasetRegistry(registry_root).versions("d")) == 1
    lineage = first.lineage
    assert lineage["config"]["sources"] == [str(demo_dir / "data.jsonl")]
    assert lineage["ingest"]["sources"] == [{"uri": str(demo_dir / "data.jsonl"), "format": "jsonl"}]
    assert lineage["package_version"] == "0.1.0"


def test_two_sources_dedup_across_sources(ray_local, demo_dir, registry_root):
    m = ingest([demo_dir / "data.jsonl", demo_dir / "data.jsonl"], registry_root)
    assert (m.counts.input, m.counts.output, m.counts.duplicates) == (48, 24, 24)


def test_unknown_column_mapping_is_a_clear_error(ray_local, demo_dir, registry_root):
    with pytest.raises(ValueError, match="unknown field"):
        ingest([demo_dir / "data.jsonl"], registry_root, columns={"picture": "x"})
    with pytest.raises(ValueError, match="does not exist"):
        ingest([demo_dir / "nope.jsonl"], registry_root)
    with pytest.raises(ValueError, match="--columns does not apply to folder sources"):
        ingest([demo_dir / "images"], registry_root, format="folder", columns={"instruction": "prompt"})
    # JSONL honours --columns as the table formats do
    lines = [json.loads(line) for line in (demo_dir / "data.jsonl").read_text().splitlines()[:3]]
    renamed = [{("prompt" if k == "instruction" else k): v for k, v in r.items()} for r in lines]
    (demo_dir / "renamed.jsonl").write_text("\n".join(json.dumps(r) for r in renamed))
    m = ingest([demo_dir / "renamed.jsonl"], registry_root, dataset="renamed", columns={"instruction": "prompt"})
    assert (m.counts.input, m.counts.output) == (3, 3)


def test_dedup_keeps_the_first_occurrence_in_source_order_across_units(ray_local, demo_dir, tmp_path):
    """Repeats inside a unit, across units and across sources: the first line of each sample wins,
    rows keep source order, and the version is the same on a rerun into a fresh registry."""
    lines = (demo_dir / "data.jsonl").read_text().splitlines()
    first = [lines[i] for i in (0, 1, 2, 1, 3, 4, 5, 6, 0, 7)] + lines[8:]  # repeats at lines 4 and 9
    second = [lines[23], lines[2], "not json", lines[10]]  # all repeats of the first source but one bad line
    (demo_dir / f"dups-a-{tmp_path.name}.jsonl").write_text("\n".join(first) + "\n")
    (demo_dir / f"dups-b-{tmp_path.name}.jsonl").write_text("\n".join(second))
    sources = [demo_dir / f"dups-a-{tmp_path.name}.jsonl", demo_dir / f"dups-b-{tmp_path.name}.jsonl"]
    m = ingest(sources, str(tmp_path / "r1"), unit_rows=3)
    assert (m.counts.input, m.counts.output, m.counts.quarantined, m.counts.duplicates) == (30, 24, 1, 5)
    assert m.stats["units"] == 9 + 2  # units of 3 lines: 26 lines, then 4
    refs = DatasetRegistry(str(tmp_path / "r1")).read_table(m)["source_ref"].to_pylist()
    kept_lines = [int(r.split(":")[1]) for r in refs]
    assert all(r.startswith("dups-a-") for r in refs)  # every repeat in the second source went
    assert kept_lines == [1, 2, 3, 5, 6, 7, 8, 10] + list(range(11, 27))  # lines 4 and 9 repeat earlier ones
    assert ingest(sources, str(tmp_path / "r2"), unit_rows=3).version == m.version


def test_versions_that_share_units_share_shard_files(ray_local, demo_dir, registry_root):
    a = ingest([demo_dir / "data.jsonl"], registry_root, dataset="s", unit_rows=8)
    b = ingest([demo_dir / "data.jsonl", demo_dir / "data.jsonl"], registry_root, dataset="s", unit_rows=8)
    assert b.counts.duplicates == 24 and [s.path for s in b.shards] == [s.path for s in a.shards]
    store = list((Path(registry_root) / "s" / "shards").rglob("*.arrow"))
    assert len(store) == len(a.shards)  # one file per distinct shard: nothing copied per version


def test_a_source_spelled_two_ways_is_one_version_and_an_empty_one_is_an_error(ray_local, demo_dir, tmp_path,
                                                                                 monkeypatch):
    monkeypatch.chdir(demo_dir.parent)
    plain = ingest([f"{demo_dir.name}/data.jsonl"], str(tmp_path / "reg"))
    dotted = ingest([f"./{demo_dir.name}//data.jsonl"], str(tmp_path / "reg"))
    assert dotted.version == plain.version
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(ValueError, match="no rows found in .*empty.jsonl: nothing to publish"):
        ingest([tmp_path / "empty.jsonl"], str(tmp_path / "reg"), dataset="e")
    assert DatasetRegistry(str(tmp_path / "reg")).versions("e") == []


def test_remote_images_are_fetched_within_a_deadline_and_a_size_cap(ray_local, tmp_path, registry_root):
    """With --allow-remote, a URL that fails, never ends or trickles its body is one row's
    quarantine (`fetch_failed`, `file_too_large`), never a hung or failed job."""
    import http.server
    import threading
    import time

    from tests.helpers import free_port

    good = corpus._png(colour=(1, 2, 3))

    class Images(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            if self.path == "/missing.png":
                self.send_error(404)
                return
            self.send_response(200)
            self.end_headers()
            try:
                if self.path == "/good.png":
                    self.wfile.write(good)
                elif self.path == "/endless.png":  # more bytes than any image may have
                    while True:
                        self.wfile.write(b"\0" * (1 << 16))
                elif self.path == "/trickle.png":  # a byte a tenth of a second: each read is quick
                    for _ in range(600):
                        self.wfile.write(b"\0")
                        self.wfile.flush()
                        time.sleep(0.1)
            except (BrokenPipeError, ConnectionResetError):
                pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Images)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    cases = [("good.png", "ok"), ("missing.png", "fetch_failed"), ("endless.png", "file_too_large"),
             ("trickle.png", "fetch_failed")]
    lines = [json.dumps({"task": "generate", "instruction": f"remote {name}", "output_image": f"{base}/{name}"})
             for name, _ in cases]
    lines.append(json.dumps({"task": "generate", "instruction": "refused",
                             "output_image": f"http://127.0.0.1:{free_port()}/x.png"}))
    cases.append(("refused", "fetch_failed"))
    (tmp_path / "remote.jsonl").write_text("\n".join(lines))
    started = time.monotonic()
    m = ingest([tmp_path / "remote.jsonl"], registry_root, dataset="remote", allow_remote=True,
               max_image_bytes=1 << 20, fetch_deadline_s=2.0)
    server.shutdown()
    assert time.monotonic() - started < 50  # the trickle alone would take 60 s
    quarantine = {int(r["source_ref"].split(":")[1]): r for r in
                  DatasetRegistry(registry_root).read_table(m, quarantine=True).to_pylist()}
    got = ["ok" if i not in quarantine else quarantine[i]["reason"] for i in range(1, len(cases) + 1)]
    assert got == [fate for _, fate in cases], [q["message"] for q in quarantine.values()]
    assert "within 2 s" in quarantine[4]["message"] and m.counts.reconciles()


def test_a_byte_order_mark_does_not_cost_the_first_row(demo_dir):
    """A JSONL file saved with a UTF-8 BOM (as Windows editors write it): the mark is not part of
    the first row, which is read like the others instead of quarantined as bad JSON."""
    plain = demo_dir / "data.jsonl"
    marked = demo_dir / "data-bom.jsonl"  # beside the images its rows name
    marked.write_bytes(codecs.BOM_UTF8 + plain.read_bytes())
    try:
        rows, with_bom = next(read_source(str(plain))), next(read_source(str(marked)))
    finally:
        marked.unlink()
    assert with_bom.num_rows == rows.num_rows
    assert with_bom["error_reason"].to_pylist() == rows["error_reason"].to_pylist() == [None] * rows.num_rows
    assert with_bom["instruction"].to_pylist() == rows["instruction"].to_pylist()
