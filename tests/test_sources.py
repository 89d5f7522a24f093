"""Every source format yields the same samples as the canonical JSONL manifest of the same data."""

import json
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.registry import DatasetRegistry
from pipeline.sources import detect_format
from tests import corpus
from tests.helpers import ingest


@pytest.fixture(scope="module")
def records(demo_dir):
    rows = [json.loads(line) for line in (demo_dir / "data.jsonl").read_text().splitlines()]
    for r in rows:
        r["input_bytes"] = (demo_dir / r["input_image"]).read_bytes() if "input_image" in r else None
        r["output_bytes"] = (demo_dir / r["output_image"]).read_bytes()
    return rows


@pytest.fixture(scope="module")
def jsonl_ids(ray_local, demo_dir, tmp_path_factory):
    m = ingest([demo_dir / "data.jsonl"], str(tmp_path_factory.mktemp("reg")))
    assert m.counts.output == 24
    return sorted(DatasetRegistry(m.lineage["config"]["registry"]).read_table(m)["sample_id"].to_pylist())


def ids_of(m):
    assert m.counts.reconciles() and m.counts.quarantined == 0, m.stats
    return sorted(DatasetRegistry(m.lineage["config"]["registry"]).read_table(m)["sample_id"].to_pylist())


def test_parquet_with_image_bytes(records, jsonl_ids, tmp_path, registry_root):
    table = pa.table({"task": [r["task"] for r in records], "instruction": [r["instruction"] for r in records],
                      "input_image": [r["input_bytes"] for r in records],
                      "output_image": [r["output_bytes"] for r in records]})
    pq.write_table(table.slice(0, 10), tmp_path / "part-0.parquet")
    pq.write_table(table.slice(10), tmp_path / "part-1.parquet")
    (tmp_path / "reg").mkdir()
    assert detect_format(str(tmp_path)) == "parquet"
    assert ids_of(ingest([tmp_path], registry_root)) == jsonl_ids


def test_parquet_with_paths_and_a_column_mapping(records, jsonl_ids, demo_dir, registry_root):
    # paths resolve against the Parquet file's folder, like the JSONL manifest's
    table = pa.table({"prompt": [r["instruction"] for r in records],
                      "source": [r.get("input_image") for r in records],
                      "target": [r["output_image"] for r in records]})
    path = demo_dir / "mapped.parquet"
    pq.write_table(table, path)
    m = ingest([path], registry_root, columns={"instruction": "prompt", "input_image": "source",
                                               "output_image": "target"})
    assert ids_of(m) == jsonl_ids  # task inferred from the presence of an input image


def test_huggingface_dataset_saved_to_disk(records, jsonl_ids, tmp_path, registry_root):
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"edit_prompt": datasets.Value("string"), "src": datasets.Image(),
                                  "edited": datasets.Image()})
    ds = datasets.Dataset.from_dict(
        {"edit_prompt": [r["instruction"] for r in records],
         "src": [{"bytes": r["input_bytes"], "path": None} if r["input_bytes"] else None for r in records],
         "edited": [{"bytes": r["output_bytes"], "path": None} for r in records]}, features=features)
    datasets.DatasetDict({"train": ds.select(range(12)), "test": ds.select(range(12, 24))}).save_to_disk(
        tmp_path / "hf")
    assert detect_format(str(tmp_path / "hf")) == "hf"
    m = ingest([tmp_path / "hf"], registry_root,
               columns={"instruction": "edit_prompt", "input_image": "src", "output_image": "edited"})
    assert ids_of(m) == jsonl_ids
    refs = DatasetRegistry(registry_root).read_table(m)["source_ref"].to_pylist()
    assert refs[0].startswith("train/") and refs[-1].startswith("test/")

    # a state.json that names a file outside the dataset is refused, naming it, before any read
    state = tmp_path / "hf" / "train" / "state.json"
    content = json.loads(state.read_text())
    content["_data_files"][0]["filename"] = "../../secret.arrow"
    state.write_text(json.dumps(content))
    with pytest.raises(ValueError, match=r"state.json names '../../secret.arrow', outside the dataset folder"):
        ingest([tmp_path / "hf"], registry_root, dataset="escape")


def test_folder_layout(records, jsonl_ids, tmp_path, registry_root):
    for r in records:
        d = tmp_path / "folder" / r["id"]
        d.mkdir(parents=True)
        (d / "instruction.txt").write_text(r["instruction"])
        (d / "output.png").write_bytes(r["output_bytes"])
        if r["input_bytes"]:
            (d / "input.png").write_bytes(r["input_bytes"])
    assert detect_format(str(tmp_path / "folder")) == "folder"
    assert ids_of(ingest([tmp_path / "folder"], registry_root)) == jsonl_ids


def test_webdataset_tars(records, jsonl_ids, tmp_path, registry_root):
    shards = tmp_path / "wds"
    shards.mkdir()
    for k, part in enumerate((records[:15], records[15:])):
        with tarfile.open(shards / f"shard-{k:04d}.tar", "w") as tar:
            for r in part:
                members = {"instruction.txt": r["instruction"].encode(), "output.png": r["output_bytes"]}
                if r["input_bytes"]:
                    members["input.png"] = r["input_bytes"]
                for suffix, data in members.items():
                    info = tarfile.TarInfo(f"{r['id']}.{suffix}")
                    info.size = len(data)
                    import io

                    tar.addfile(info, io.BytesIO(data))
    assert detect_format(str(shards)) == "webdataset"
    assert ids_of(ingest([shards], registry_root)) == jsonl_ids
    single = ingest([shards / "shard-0000.tar"], registry_root, dataset="one")
    assert single.counts.output == 15


def test_folder_and_tar_ambiguity_and_special_files_are_quarantined_and_tars_grouped_by_key(records, tmp_path, registry_root):
    """Never a silent pick: two candidate images, a duplicated tar member, a text file that is a
    folder, a FIFO or a link out of the sample each get their own reason; a tar out of key order is
    grouped by key, not split into fragments."""
    import io
    import os

    edit = next(r for r in records if r["input_bytes"])
    folder = tmp_path / "hostile"
    for key in "abcdef":
        d = folder / key
        d.mkdir(parents=True)
        (d / "output.png").write_bytes(edit["output_bytes"])
        (d / "input.png").write_bytes(edit["input_bytes"])
        if key != "c" and key != "d" and key != "e":
            (d / "instruction.txt").write_text(f"{key}: {edit['instruction']}")
    (folder / "b" / "input.jpg").write_bytes(edit["input_bytes"])  # which input?
    (folder / "c" / "instruction.txt").mkdir()
    (tmp_path / "secret.txt").write_text("not yours")
    os.symlink(tmp_path / "secret.txt", folder / "d" / "instruction.txt")
    os.mkfifo(folder / "e" / "instruction.txt")
    (folder / "f" / "output.png.bak").write_bytes(edit["output_bytes"])
    m = ingest([folder], registry_root, dataset="hostile-folder")
    reasons = {r["source_ref"]: r["reason"] for r in
               DatasetRegistry(registry_root).read_table(m, quarantine=True).to_pylist()}
    assert reasons == {"b": "ambiguous_files", "c": "not_a_file", "d": "path_outside_source", "e": "not_a_file",
                       "f": "ambiguous_files"}
    assert (m.counts.input, m.counts.output) == (6, 1)

    members = [("k1.instruction.txt", b"k1: make it blue"), ("k1.input.png", edit["input_bytes"]),
               ("k1.output.png", edit["output_bytes"]),
               ("k2.instruction.txt", b"k2: make it blue"), ("k2.input.png", edit["input_bytes"]),
               ("k2.input.png", edit["input_bytes"]), ("k2.output.png", edit["output_bytes"]),
               ("k3.instruction.txt", b"k3: make it blue"), ("k3.input.png", edit["input_bytes"]),
               ("k4.instruction.txt", b"k4: make it blue"), ("k4.input.png", edit["input_bytes"]),
               ("k4.output.png", edit["output_bytes"]),
               ("k3.output.png", edit["output_bytes"]),  # k3's target, after k4: not adjacent
               ("k5.input.png", edit["input_bytes"]), ("k6.input.png", edit["input_bytes"]),
               ("k5.output.png", edit["output_bytes"]), ("k6.output.png", edit["output_bytes"]),
               ("k5.instruction.txt", b"k5: make it blue"), ("k6.instruction.txt", b"k6: make it blue")]
    with tarfile.open(tmp_path / "hostile.tar", "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    m = ingest([tmp_path / "hostile.tar"], registry_root, dataset="hostile-tar")
    quarantine = DatasetRegistry(registry_root).read_table(m, quarantine=True).to_pylist()
    assert [(r["source_ref"], r["reason"]) for r in quarantine] == [("hostile.tar:k2", "duplicate_member")]
    kept = DatasetRegistry(registry_root).read_table(m).to_pylist()
    assert [(r["instruction"].split(":")[0], r["task"]) for r in kept] == [
        ("k1", "edit"), ("k3", "edit"), ("k4", "edit"), ("k5", "edit"), ("k6", "edit")]
    assert (m.counts.input, m.counts.output) == (6, 5)


def test_a_cut_tar_and_a_corrupt_parquet_row_group_keep_the_rows_read(records, tmp_path, registry_root):
    """A partly unreadable file keeps every row read before the damage; what is lost is quarantined
    under its reference (each row of a Parquet row group; the rest of a tar as one row)."""
    import io

    edits = [r for r in records if r["input_bytes"]][:6]
    with tarfile.open(tmp_path / "whole.tar", "w") as tar:
        for r in edits:
            for suffix, data in (("instruction.txt", r["instruction"].encode()), ("input.png", r["input_bytes"]),
                                 ("output.png", r["output_bytes"])):
                info = tarfile.TarInfo(f"{r['id']}.{suffix}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    data = (tmp_path / "whole.tar").read_bytes()
    (tmp_path / "cut.tar").write_bytes(data[: len(data) * 2 // 3])
    m = ingest([tmp_path / "cut.tar"], registry_root, dataset="cut")
    quarantine = DatasetRegistry(registry_root).read_table(m, quarantine=True).to_pylist()
    assert m.counts.output >= 2 and m.counts.reconciles()
    assert {r["reason"] for r in quarantine} == {"truncated_archive"}
    assert any(r["source_ref"].startswith("cut.tar:after:") for r in quarantine)

    table = pa.table({"instruction": [r["instruction"] for r in edits],
                      "input_image": [r["input_bytes"] for r in edits],
                      "output_image": [r["output_bytes"] for r in edits]})
    pq.write_table(table, tmp_path / "three.parquet", row_group_size=2, compression="snappy")
    corpus.damage_row_group(tmp_path / "three.parquet", row_group=1, column=2)
    m = ingest([tmp_path / "three.parquet"], registry_root, dataset="corrupt")
    quarantine = DatasetRegistry(registry_root).read_table(m, quarantine=True).to_pylist()
    assert sorted((r["source_ref"], r["reason"]) for r in quarantine) == [
        ("three.parquet:2", "unreadable_row_group"), ("three.parquet:3", "unreadable_row_group")]
    assert (m.counts.input, m.counts.output) == (6, 4)


def test_a_tar_that_is_not_one_is_one_quarantined_row_with_its_reason(tmp_path):
    """An empty `.tar`, gzip data named `.tar`, and text named `.tar`: each is one row with a reason
    (the count stays whole), never a traceback that fails the job."""
    import gzip

    from pipeline.sources import read_source

    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "a-empty.tar").write_bytes(b"")
    (shards / "b-gzip.tar").write_bytes(gzip.compress(b"x" * 4096))
    (shards / "c-text.tar").write_bytes(b"not a tar archive, just words\n" * 40)
    rows = [r for t in read_source(str(shards), "webdataset") for r in t.to_pylist()]
    print({r["source_ref"]: (r["error_reason"], r["error_message"]) for r in rows})
    assert [r["source_ref"] for r in rows] == ["a-empty.tar", "b-gzip.tar", "c-text.tar"]
    assert [r["error_reason"] for r in rows] == ["unreadable_archive"] * 3
    assert all(r["error_message"].startswith(f"{r['source_ref']} is not a tar archive: ReadError") for r in rows)
