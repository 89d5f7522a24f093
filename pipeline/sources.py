"""Source readers for ingest: each turns one source into batches of *reference rows*.

A reference row names a sample without decoding it: the instruction, the images as inline bytes or
as paths relative to the source's folder, and where the row came from. Problems found while reading
(a line that is not JSON, an instruction that is not UTF-8) ride along as `error_reason` so the
ingest stage can quarantine the row; nothing is skipped here. Images are read and checked later,
in parallel, by the ingest stage.

Formats: `jsonl` (the canonical manifest), `parquet`, `hf` (a Hugging Face dataset saved with
`save_to_disk`; for a Parquet export use `parquet`), `folder` (`<id>/input.*`, `<id>/output.*`,
`<id>/instruction.txt`) and `webdataset` (tars with `<key>.input.jpg`, `<key>.output.jpg`,
`<key>.instruction.txt`).
"""

from __future__ import annotations

import json
import os
import posixpath
import tarfile
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from pipeline.images import stable_message

FORMATS = ("jsonl", "parquet", "hf", "folder", "webdataset")
CANONICAL_COLUMNS = ("task", "instruction", "input_image", "output_image", "id", "category", "meta")
READ_BATCH_ROWS = 256

REFERENCE_SCHEMA = pa.schema([
    ("source", pa.string()),
    ("source_ref", pa.string()),
    ("base", pa.string()),  # folder that relative image paths resolve against
    ("task", pa.string()),
    ("instruction", pa.string()),
    ("input_image_bytes", pa.binary()),
    ("input_image_path", pa.string()),
    ("output_image_bytes", pa.binary()),
    ("output_image_path", pa.string()),
    ("category", pa.string()),
    ("meta", pa.string()),
    ("error_reason", pa.string()),
    ("error_message", pa.string()),
    ("record", pa.string()),  # the source row as JSON, bytes left out, for the quarantine
])


def is_uri(location: str) -> bool:
    return "://" in location and not location.startswith("file://")


def filesystem(location: str) -> tuple[pafs.FileSystem, str]:
    """A local path or any pyarrow filesystem URI -> (filesystem, path inside it)."""
    if is_uri(location):
        return pafs.FileSystem.from_uri(location)
    return pafs.LocalFileSystem(), os.path.abspath(location.removeprefix("file://"))


def _folder(location: str) -> str:
    """The location itself as a folder, in the form image paths are resolved against."""
    return location.rstrip("/") if is_uri(location) else filesystem(location)[1]


def _parent(location: str) -> str:
    return posixpath.dirname(_folder(location))


def read_bytes(fs: pafs.FileSystem, path: str) -> bytes:
    with fs.open_input_stream(path) as f:
        return f.read()


def detect_format(source: str) -> str:
    fs, path = filesystem(source)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise ValueError(f"source {source!r} does not exist")
    if info.type == pafs.FileType.File:
        for suffix, fmt in ((".jsonl", "jsonl"), (".json", "jsonl"), (".parquet", "parquet"),
                            (".tar", "webdataset")):
            if path.endswith(suffix):
                return fmt
        raise ValueError(f"cannot tell the format of {source!r}; pass --format")
    names = {i.base_name for i in fs.get_file_info(pafs.FileSelector(path))}
    if names & {"state.json", "dataset_dict.json"}:
        return "hf"
    if any(n.endswith(".parquet") for n in names):
        return "parquet"
    if names and all(n.endswith(".tar") for n in names):
        return "webdataset"
    return "folder"


class _Batcher:
    """Accumulates reference rows into tables of READ_BATCH_ROWS."""

    def __init__(self, source: str, base: str):
        self.defaults = {"source": source, "base": base}
        self.rows: list[dict[str, Any]] = []

    def add(self, **row: Any) -> pa.Table | None:
        self.rows.append({**self.defaults, **row})
        return self.flush() if len(self.rows) >= READ_BATCH_ROWS else None

    def flush(self) -> pa.Table | None:
        if not self.rows:
            return None
        table = pa.Table.from_pylist(self.rows, schema=REFERENCE_SCHEMA)
        self.rows = []
        return table


def _text(value: Any, field: str) -> tuple[str | None, str | None]:
    """A JSON value -> (text, error reason)."""
    if value is None:
        return None, None
    if not isinstance(value, str):
        return None, f"{field} must be a string, got {type(value).__name__}"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return None, "invalid_utf8"
    return value, None


def _printable(value: Any) -> str:
    """JSON fallback for quarantine records: image bytes are summarised, never stored twice."""
    if isinstance(value, (bytes, bytearray)):
        return f"<{len(value)} bytes>"
    return str(value)


def _record_row(obj: dict[str, Any], ref: str) -> dict[str, Any]:
    """A manifest-like mapping (JSONL object, Parquet row) -> reference row fields."""
    row: dict[str, Any] = {"source_ref": ref}
    problems = []
    for field in ("task", "instruction", "category"):
        row[field], problem = _text(obj.get(field), field)
        if problem:
            problems.append(problem)
    for side in ("input_image", "output_image"):
        value = obj.get(side)
        if isinstance(value, dict):  # Hugging Face Image feature: {"bytes": ..., "path": ...}
            value = value.get("bytes") or value.get("path")
        if isinstance(value, (bytes, bytearray)):
            row[f"{side}_bytes"] = bytes(value)
        elif isinstance(value, str) or value is None:
            row[f"{side}_path"] = value
        else:
            problems.append(f"{side} must be a path or bytes, got {type(value).__name__}")
    meta = obj.get("meta")
    if obj.get("id") is not None:
        meta = {**(meta if isinstance(meta, dict) else {"meta": meta} if meta is not None else {}),
                "source_id": obj["id"]}
    row["meta"] = json.dumps(meta, sort_keys=True, default=str) if meta is not None else None
    row["record"] = json.dumps(obj, default=_printable, sort_keys=True)[:2000]
    if problems:
        reason = "invalid_utf8" if "invalid_utf8" in problems else "bad_field_type"
        row.update(error_reason=reason, error_message="; ".join(problems))
    return row


def read_jsonl(source: str) -> Iterator[pa.Table]:
    fs, path = filesystem(source)
    batcher = _Batcher(source, _parent(source))
    for lineno, raw in enumerate(read_bytes(fs, path).split(b"\n"), start=1):
        if not raw.strip():
            continue
        ref = f"{posixpath.basename(path)}:{lineno}"
        try:
            obj = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            row = {"source_ref": ref, "error_reason": "invalid_utf8", "error_message": stable_message(e)}
        except json.JSONDecodeError as e:
            row = {"source_ref": ref, "error_reason": "bad_json", "error_message": stable_message(e),
                   "record": raw[:2000].decode("utf-8", "replace")}
        else:
            if isinstance(obj, dict):
                row = _record_row(obj, ref)
            else:
                row = {"source_ref": ref, "error_reason": "bad_json",
                       "error_message": f"line holds a JSON {type(obj).__name__}, not an object"}
        if (table := batcher.add(**row)) is not None:
            yield table
    if (table := batcher.flush()) is not None:
        yield table


def _rename(table: pa.Table, columns: dict[str, str]) -> pa.Table:
    """Apply a `canonical=source_column` mapping; unknown mapped columns are an error."""
    missing = [src for src in columns.values() if src not in table.column_names]
    if missing:
        raise ValueError(f"--columns names {missing}, not in the source's columns {table.column_names}")
    inverse = {src: canon for canon, src in columns.items()}
    return table.rename_columns([inverse.get(c, c) for c in table.column_names])


def _read_tables(source: str, tables: Iterator[tuple[str, pa.Table]], base: str,
                 columns: dict[str, str]) -> Iterator[pa.Table]:
    batcher = _Batcher(source, base)
    for name, table in tables:
        table = _rename(table, columns)
        keep = [c for c in CANONICAL_COLUMNS if c in table.column_names]
        if "output_image" not in keep or "instruction" not in keep:
            raise ValueError(f"{source}: needs instruction and output_image columns "
                             f"(map them with --columns), has {table.column_names}")
        offset = 0
        for batch in table.select(keep).to_batches(max_chunksize=READ_BATCH_ROWS):
            for i, obj in enumerate(batch.to_pylist()):
                if "task" not in keep:  # tabular sets rarely say; an input image means an edit
                    obj["task"] = "edit" if obj.get("input_image") is not None else "generate"
                if (out := batcher.add(**_record_row(obj, f"{name}:{offset + i}"))) is not None:
                    yield out
            offset += batch.num_rows
    if (out := batcher.flush()) is not None:
        yield out


def read_parquet(source: str, columns: dict[str, str]) -> Iterator[pa.Table]:
    fs, path = filesystem(source)
    if fs.get_file_info(path).type == pafs.FileType.File:
        files, base = [path], _parent(source)
    else:
        selector = pafs.FileSelector(path, recursive=True)
        files = sorted(i.path for i in fs.get_file_info(selector) if i.path.endswith(".parquet"))
        base = _folder(source)

    def tables():
        for f in files:
            for i, batch in enumerate(pq.ParquetFile(fs.open_input_file(f)).iter_batches(READ_BATCH_ROWS)):
                yield f"{posixpath.relpath(f, posixpath.dirname(files[0]))}#{i}", pa.Table.from_batches([batch])

    return _read_tables(source, tables(), base, columns)


def read_hf_saved(source: str, columns: dict[str, str]) -> Iterator[pa.Table]:
    """`Dataset.save_to_disk` writes Arrow IPC *streams* listed in state.json; a DatasetDict adds
    one such folder per split. Read with pyarrow: no `datasets` import needed."""
    fs, path = filesystem(source)
    names = {i.base_name for i in fs.get_file_info(pafs.FileSelector(path))}
    if "dataset_dict.json" in names:
        splits = json.loads(read_bytes(fs, f"{path}/dataset_dict.json"))["splits"]
        folders = [(split, f"{path}/{split}") for split in splits]
    else:
        folders = [("", path)]

    def tables():
        for split, folder in folders:
            state = json.loads(read_bytes(fs, f"{folder}/state.json"))
            for entry in state["_data_files"]:
                with fs.open_input_stream(f"{folder}/{entry['filename']}") as f:
                    for i, batch in enumerate(ipc.open_stream(f)):
                        name = posixpath.join(split, entry["filename"])
                        yield f"{name}#{i}", pa.Table.from_batches([batch])

    return _read_tables(source, tables(), _folder(source), columns)


def _find(names: set[str], stem: str) -> str | None:
    found = sorted(n for n in names if n.split(".", 1)[0] == stem and n != f"{stem}.txt")
    return found[0] if found else None


def read_folder(source: str) -> Iterator[pa.Table]:
    fs, path = filesystem(source)
    batcher = _Batcher(source, _folder(source))
    # Listing order is the filesystem's: sort, so rows (and the version id) follow the names.
    for sample in sorted(fs.get_file_info(pafs.FileSelector(path)), key=lambda i: i.base_name):
        if sample.type != pafs.FileType.Directory:
            continue
        names = {i.base_name for i in fs.get_file_info(pafs.FileSelector(sample.path))}
        key = sample.base_name
        row: dict[str, Any] = {"source_ref": key, "record": json.dumps({"id": key, "files": sorted(names)})}
        files = {"input": _find(names, "input"), "output": _find(names, "output")}
        row["input_image_path"] = f"{key}/{files['input']}" if files["input"] else None
        row["output_image_path"] = f"{key}/{files['output']}" if files["output"] else None
        row["task"] = "edit" if files["input"] else "generate"
        row["meta"] = json.dumps({"source_id": key})
        if "category.txt" in names:
            row["category"] = read_bytes(fs, f"{sample.path}/category.txt").decode("utf-8", "replace").strip()
        if "instruction.txt" in names:
            try:
                row["instruction"] = read_bytes(fs, f"{sample.path}/instruction.txt").decode("utf-8")
            except UnicodeDecodeError as e:
                row.update(error_reason="invalid_utf8", error_message=f"instruction.txt: {stable_message(e)}")
        if (table := batcher.add(**row)) is not None:
            yield table
    if (table := batcher.flush()) is not None:
        yield table


def read_webdataset(source: str) -> Iterator[pa.Table]:
    fs, path = filesystem(source)
    if fs.get_file_info(path).type == pafs.FileType.File:
        tars = [path]
    else:
        tars = sorted(i.path for i in fs.get_file_info(pafs.FileSelector(path)) if i.path.endswith(".tar"))
    batcher = _Batcher(source, _parent(source))

    def sample_row(tar_name: str, key: str, members: dict[str, bytes]) -> dict[str, Any]:
        names = set(members)
        row: dict[str, Any] = {"source_ref": f"{tar_name}:{key}",
                               "record": json.dumps({"key": key, "members": sorted(names)})}
        inp, out = _find(names, "input"), _find(names, "output")
        row["input_image_bytes"] = members[inp] if inp else None
        row["output_image_bytes"] = members[out] if out else None
        row["task"] = "edit" if inp else "generate"
        row["meta"] = json.dumps({"source_id": key})
        if "category.txt" in names:
            row["category"] = members["category.txt"].decode("utf-8", "replace").strip()
        if "instruction.txt" in names:
            try:
                row["instruction"] = members["instruction.txt"].decode("utf-8")
            except UnicodeDecodeError as e:
                row.update(error_reason="invalid_utf8", error_message=f"instruction.txt: {stable_message(e)}")
        return row

    for tar_path in tars:
        tar_name = posixpath.basename(tar_path)
        # WebDataset keeps a sample's members adjacent: stream the tar, emit a sample when its key
        # changes, so memory holds one sample at a time.
        with fs.open_input_stream(tar_path) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
            key, members = None, {}
            for member in tar:
                if not member.isfile():
                    continue
                dirname, base = posixpath.split(member.name)
                sample_key, _, suffix = base.partition(".")
                sample_key = posixpath.join(dirname, sample_key)
                if sample_key != key and key is not None:
                    if (table := batcher.add(**sample_row(tar_name, key, members))) is not None:
                        yield table
                    members = {}
                key = sample_key
                members[suffix] = tar.extractfile(member).read()
            if key is not None and (table := batcher.add(**sample_row(tar_name, key, members))) is not None:
                yield table
    if (table := batcher.flush()) is not None:
        yield table


def read_source(source: str, fmt: str = "auto", columns: dict[str, str] | None = None) -> Iterator[pa.Table]:
    """Reference-row batches of one source, in source order."""
    fmt = detect_format(source) if fmt == "auto" else fmt
    columns = columns or {}
    unknown = sorted(set(columns) - set(CANONICAL_COLUMNS))
    if unknown:
        raise ValueError(f"--columns maps unknown field(s) {unknown}; fields: {CANONICAL_COLUMNS}")
    if fmt == "jsonl":
        return read_jsonl(source)
    if fmt == "parquet":
        return read_parquet(source, columns)
    if fmt == "hf":
        return read_hf_saved(source, columns)
    if fmt == "folder":
        return read_folder(source)
    if fmt == "webdataset":
        return read_webdataset(source)
    raise ValueError(f"unknown format {fmt!r}; choose auto or one of {FORMATS}")
