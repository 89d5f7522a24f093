"""Source readers for ingest, in two halves: planning on the driver, reading on workers.

`plan_source` cuts a source into *units* from listings and metadata alone (file names, Parquet row
groups, line offsets of a JSONL manifest): small JSON-able specs, deterministic for the same source.
`read_unit` turns one spec into batches of *reference rows* on a worker. A reference row names a
sample without decoding it: the instruction, the images as inline bytes or as paths relative to
the source's folder, and where the row came from. Problems found while reading (a line that is not
JSON, an instruction that is not UTF-8) ride along as `error_reason` so the ingest stage can
quarantine the row; nothing is skipped here. Images are checked later, by the ingest stage.

Formats: `jsonl` (the canonical manifest), `parquet`, `hf` (a Hugging Face dataset saved with
`save_to_disk`; for a Parquet export use `parquet`), `folder` (`<id>/input.*`, `<id>/output.*`,
`<id>/instruction.txt`) and `webdataset` (tars with `<key>.input.jpg`, `<key>.output.jpg`,
`<key>.instruction.txt`). Units: a range of lines, a run of row groups, an Arrow file, a range of
sample folders, a tar.
"""

from __future__ import annotations

import codecs
import contextlib
import dataclasses
import itertools
import json
import os
import posixpath
import tarfile
import zlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from pipeline.images import Rejected, stable_message
from pipeline.storage import is_uri, open_location

FORMATS = ("jsonl", "parquet", "hf", "folder", "webdataset")
CANONICAL_COLUMNS = ("task", "instruction", "input_image", "output_image", "id", "category", "meta")
READ_BATCH_ROWS = 256
UNIT_ROWS = 1024  # default unit size where the source does not fix it (lines, folders)

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


def _folder(location: str) -> str:
    """The location itself as a folder, in the form image paths are resolved against."""
    return location.rstrip("/") if is_uri(location) else open_location(location)[1]


def _parent(location: str) -> str:
    return posixpath.dirname(_folder(location))


def read_bytes(fs: pafs.FileSystem, path: str) -> bytes:
    with fs.open_input_stream(path) as f:
        return f.read()


def read_file(fs: pafs.FileSystem, target: str, name: str, max_bytes: int, base: str = "") -> bytes:
    """A file a row names, once it is known to be a regular file of at most `max_bytes`: a FIFO, a
    device or a folder where a file belongs is refused without being opened. Raises Rejected
    (`name` is how the row spelled it; `base` is taken out of messages)."""
    try:
        info = fs.get_file_info(target)
        if info.type == pafs.FileType.NotFound:
            raise Rejected("file_not_found", f"{name!r} does not exist in the source folder")
        if info.type != pafs.FileType.File:
            raise Rejected("not_a_file", f"{name!r} is a {info.type.name.lower()}, not a regular file")
        if info.size is not None and info.size > max_bytes:
            raise Rejected("file_too_large", f"{name!r}: {info.size} bytes > {max_bytes}")
        return read_bytes(fs, target)
    except (OSError, ValueError) as e:  # a NUL in the name, a permission, a vanished file
        raise Rejected("unreadable_file", f"{name!r}: {stable_message(e, base)}") from None


def inside(fs: pafs.FileSystem, target: str, root: str) -> bool:
    """`target` stays under `root` once `..` and (on a local disk) symbolic links are resolved."""
    resolved = posixpath.normpath(target)
    if isinstance(fs, pafs.LocalFileSystem):
        resolved, root = os.path.realpath(resolved), os.path.realpath(root)
    return (resolved + "/").startswith(root.rstrip("/") + "/")


def detect_format(source: str) -> str:
    fs, path = open_location(source)
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


def plan_jsonl(source: str, unit_rows: int) -> list[dict[str, Any]]:
    """Byte ranges of `unit_rows` lines each, found by one streaming pass over the file (the
    driver holds one block at a time, never the file)."""
    fs, path = open_location(source)
    units, start, lines, offset, line = [], 0, 0, 0, 1
    with fs.open_input_stream(path) as f:
        while block := f.read(64 << 20):
            for pos in np.flatnonzero(np.frombuffer(block, np.uint8) == 10):
                lines += 1
                if lines == unit_rows:
                    end = offset + int(pos) + 1
                    units.append({"path": path, "start": start, "end": end, "first_line": line})
                    start, line, lines = end, line + lines, 0
            offset += len(block)
    if offset > start:
        units.append({"path": path, "start": start, "end": offset, "first_line": line})
    return units


def read_jsonl(source: str, unit: dict[str, Any]) -> Iterator[pa.Table]:
    fs, _ = open_location(source)
    with fs.open_input_file(unit["path"]) as f:
        data = f.read_at(unit["end"] - unit["start"], unit["start"])
    batcher = _Batcher(source, _parent(source))
    name = posixpath.basename(unit["path"])
    if unit["start"] == 0:  # a UTF-8 byte-order mark (Windows editors write one) is not part of the first row
        data = data.removeprefix(codecs.BOM_UTF8)
    for lineno, raw in enumerate(data.split(b"\n"), start=unit["first_line"]):
        if not raw.strip():
            continue
        ref = f"{name}:{lineno}"
        try:
            obj = json.loads(raw.decode("utf-8"), object_pairs_hook=_unique_keys)
        except UnicodeDecodeError as e:
            row = {"source_ref": ref, "error_reason": "invalid_utf8", "error_message": stable_message(e)}
        except (json.JSONDecodeError, RecursionError, _DuplicateKey) as e:  # RecursionError: nesting too deep
            reason = "duplicate_key" if isinstance(e, _DuplicateKey) else "bad_json"
            row = {"source_ref": ref, "error_reason": reason, "error_message": stable_message(e)[:500],
                   "record": raw[:2000].decode("utf-8", "replace")}
        else:
            if isinstance(obj, dict):
                for canonical, field in unit.get("mapping", {}).items():  # --columns, as for tables
                    if field in obj:
                        obj[canonical] = obj.pop(field)
                row = _record_row(obj, ref)
            else:
                row = {"source_ref": ref, "error_reason": "bad_json",
                       "error_message": f"line holds a JSON {type(obj).__name__}, not an object"}
        if (table := batcher.add(**row)) is not None:
            yield table
    if (table := batcher.flush()) is not None:
        yield table


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose key appears twice is ambiguous (parsers keep either value): refused."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        twice = sorted({k for k, _ in pairs if k in seen or seen.add(k)})
        raise _DuplicateKey(f"key(s) {twice} appear more than once in one object")
    return obj


def _rename(table: pa.Table, columns: dict[str, str]) -> pa.Table:
    """Apply a `canonical=source_column` mapping; unknown mapped columns are an error."""
    missing = [src for src in columns.values() if src not in table.column_names]
    if missing:
        raise ValueError(f"--columns names {missing}, not in the source's columns {table.column_names}")
    inverse = {src: canon for canon, src in columns.items()}
    return table.rename_columns([inverse.get(c, c) for c in table.column_names])


def _check_columns(source: str, names: list[str], columns: dict[str, str]) -> list[str]:
    """The source columns to read, after checking the mapping against the source's schema (on the
    driver, so a wrong --columns fails the job at once, not on every worker)."""
    missing = [src for src in columns.values() if src not in names]
    if missing:
        raise ValueError(f"--columns names {missing}, not in the source's columns {names}")
    inverse = {src: canon for canon, src in columns.items()}
    canonical = {inverse.get(c, c) for c in names}
    if "output_image" not in canonical or "instruction" not in canonical:
        raise ValueError(f"{source}: needs instruction and output_image columns "
                         f"(map them with --columns), has {names}")
    return [c for c in names if inverse.get(c, c) in CANONICAL_COLUMNS]


def _table_rows(source: str, base: str, name: str, first_row: int, batches: Iterator[pa.RecordBatch],
                columns: dict[str, str]) -> Iterator[pa.Table]:
    batcher = _Batcher(source, base)
    row = first_row
    for batch in batches:
        if isinstance(batch, _LostRows):
            for _ in range(batch.rows if batch.rows is not None else 1):
                ref = f"{name}:{row}" if batch.rows is not None else f"{name}:{row}-end"
                if (out := batcher.add(source_ref=ref, error_reason=batch.reason, error_message=batch.message)):
                    yield out
                row += 1
            continue
        table = _rename(pa.Table.from_batches([batch]), columns)
        keep = [c for c in CANONICAL_COLUMNS if c in table.column_names]
        for obj in table.select(keep).to_pylist():
            if "task" not in keep:  # tabular sets rarely say; an input image means an edit
                obj["task"] = "edit" if obj.get("input_image") is not None else "generate"
            if (out := batcher.add(**_record_row(obj, f"{name}:{row}"))) is not None:
                yield out
            row += 1
    if (out := batcher.flush()) is not None:
        yield out


def _parquet_files(source: str) -> tuple[pafs.FileSystem, list[str], str]:
    """(file system, the Parquet files in name order, the folder their names are relative to)."""
    fs, path = open_location(source)
    if fs.get_file_info(path).type == pafs.FileType.File:
        return fs, [path], posixpath.dirname(path)
    selector = pafs.FileSelector(path, recursive=True)
    return fs, sorted(i.path for i in fs.get_file_info(selector) if i.path.endswith(".parquet")), path


def plan_parquet(source: str, columns: dict[str, str], unit_rows: int) -> list[dict[str, Any]]:
    """Runs of whole row groups of up to `unit_rows` rows (a bigger row group is a unit of its
    own: Parquet reads a row group's column chunks whole), from the files' footers alone. A file
    whose footer cannot be read is a unit of its own that reads as one quarantined row."""
    fs, files, top = _parquet_files(source)
    units = []
    for f in files:
        name = posixpath.relpath(f, top)
        try:
            meta = pq.ParquetFile(fs.open_input_file(f)).metadata
        except (OSError, pa.ArrowException) as e:  # a cut or corrupt footer, not Parquet at all
            units.append({"path": f, "name": name, "unreadable": f"{name}: {stable_message(e)}"})
            continue
        read = _check_columns(source, meta.schema.to_arrow_schema().names, columns)
        group, rows, first = [], 0, 0
        for i in range(meta.num_row_groups):
            n = meta.row_group(i).num_rows
            if group and rows + n > unit_rows:
                units.append({"path": f, "name": name, "row_groups": group, "first_row": first, "columns": read})
                group, first, rows = [], first + rows, 0
            group.append(i)
            rows += n
        if group:
            units.append({"path": f, "name": name, "row_groups": group, "first_row": first, "columns": read})
    return units


def read_parquet(source: str, unit: dict[str, Any], columns: dict[str, str]) -> Iterator[pa.Table]:
    fs, path = open_location(source)
    # A file's image paths are relative to its own folder: a file in a subfolder has its images beside it
    subfolder = posixpath.dirname(unit["name"])
    if fs.get_file_info(path).type == pafs.FileType.File:
        base = _parent(source)
    else:
        base = posixpath.join(_folder(source), subfolder) if subfolder else _folder(source)
    if "unreadable" in unit:
        return _table_rows(source, base, unit["name"], 0, iter([_LostRows(None, "unreadable_file", unit["unreadable"])]), columns)
    parquet = pq.ParquetFile(fs.open_input_file(unit["path"]))

    def batches() -> Iterator[pa.RecordBatch | _LostRows]:
        # A row group at a time, whole: one that cannot be read (a corrupt page) loses its rows
        # alone, each quarantined under its own reference; the file's other groups are kept.
        for group in unit["row_groups"]:
            try:
                table = parquet.read_row_group(group, columns=unit["columns"])
            except (OSError, pa.ArrowException) as e:
                yield _LostRows(parquet.metadata.row_group(group).num_rows, "unreadable_row_group",
                                f"row group {group}: {stable_message(e)}")
                continue
            yield from table.to_batches(READ_BATCH_ROWS)

    return _table_rows(source, base, unit["name"], unit["first_row"], batches(), columns)


@dataclasses.dataclass(frozen=True)
class _LostRows:
    """Rows a reader knows exist but could not read (`rows` of them, or None: the rest of a file)."""

    rows: int | None
    reason: str
    message: str


def _hf_files(source: str) -> list[tuple[str, str]]:
    """(path, name) of every Arrow file of a `save_to_disk` folder, splits in their listed order."""
    fs, path = open_location(source)
    names = {i.base_name for i in fs.get_file_info(pafs.FileSelector(path))}
    if "dataset_dict.json" in names:
        splits = json.loads(read_bytes(fs, f"{path}/dataset_dict.json"))["splits"]
        folders = [(split, f"{path}/{split}") for split in splits]
    else:
        folders = [("", path)]
    files = []
    for split, folder in folders:
        if not inside(fs, folder, path):
            raise ValueError(f"{source}: split {split!r} of dataset_dict.json lies outside the dataset folder")
        try:
            entries = json.loads(read_bytes(fs, f"{folder}/state.json"))["_data_files"]
            names = [entry["filename"] for entry in entries]
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{source}: {split or '.'}/state.json is not a `save_to_disk` state: "
                             f"{stable_message(e)}") from None
        for name in names:
            # state.json names the files to read: a name that leaves the dataset folder (`../`, an
            # absolute path, a link) would make ingest read any file the worker can.
            if not isinstance(name, str) or not inside(fs, f"{folder}/{name}", path):
                raise ValueError(f"{source}: state.json names {name!r}, outside the dataset folder")
            files.append((f"{folder}/{name}", posixpath.join(split, name)))
    return files


def plan_hf_saved(source: str, columns: dict[str, str]) -> list[dict[str, Any]]:
    """`Dataset.save_to_disk` writes Arrow IPC *streams* listed in state.json (a DatasetDict: one
    such folder per split); one unit per file. Read with pyarrow: no `datasets` import needed."""
    fs, _ = open_location(source)
    units = []
    for path, name in _hf_files(source):
        with fs.open_input_stream(path) as f:
            read = _check_columns(source, ipc.open_stream(f).schema.names, columns)
        units.append({"path": path, "name": name, "columns": read})
    return units


def read_hf_saved(source: str, unit: dict[str, Any], columns: dict[str, str]) -> Iterator[pa.Table]:
    fs, _ = open_location(source)
    def batches() -> Iterator[pa.RecordBatch | _LostRows]:
        with fs.open_input_stream(unit["path"]) as f:
            try:
                for batch in ipc.open_stream(f):
                    yield batch.select(unit["columns"])
            except (OSError, pa.ArrowException) as e:  # a cut or corrupt file: what was read stays
                yield _LostRows(None, "truncated_file", f"the rest of {unit['name']} is unreadable: {stable_message(e)}")

    yield from _table_rows(source, _folder(source), unit["name"], 0, batches(), columns)


class _BadFileNames(ValueError):
    pass


def _find(names: set[str], stem: str) -> str | None:
    """The one file named `stem.<ext>`. Two candidates (`input.png` and `input.jpg`, or a `.bak`
    beside it) are ambiguous, and a lone name with more than one extension (`output.png.bak`) is
    not an image's name: both refused, never a silent pick."""
    found = sorted(n for n in names if n.split(".", 1)[0] == stem and n != f"{stem}.txt")
    if len(found) > 1:
        raise _BadFileNames("ambiguous_files", f"{len(found)} candidate {stem} files: {found}")
    if found and found[0].count(".") > 1:
        raise _BadFileNames("unknown_extension", f"{found[0]!r} is not named {stem}.<image extension>")
    return found[0] if found else None


def _files_row(names: set[str], key: str, path_of) -> dict[str, Any]:
    """The image fields of a folder or tar sample from its file names: paths or bytes via `path_of`."""
    try:
        inp, out = _find(names, "input"), _find(names, "output")
    except _BadFileNames as e:
        reason, message = e.args
        return {"error_reason": reason, "error_message": f"{key}: {message}"}
    return {**path_of("input", inp), **path_of("output", out), "task": "edit" if inp else "generate"}


def plan_folder(source: str, unit_rows: int) -> list[dict[str, Any]]:
    """Runs of `unit_rows` sample folders, in name order (a listing's order is the filesystem's)."""
    fs, path = open_location(source)
    names = sorted(i.base_name for i in fs.get_file_info(pafs.FileSelector(path))
                   if i.type == pafs.FileType.Directory)
    return [{"samples": names[i:i + unit_rows]} for i in range(0, len(names), unit_rows)]


def read_folder(source: str, unit: dict[str, Any]) -> Iterator[pa.Table]:
    fs, path = open_location(source)
    batcher = _Batcher(source, _folder(source))
    for key in unit["samples"]:
        sample = f"{path}/{key}"
        names = {i.base_name for i in fs.get_file_info(pafs.FileSelector(sample))}
        row: dict[str, Any] = {"source_ref": key, "record": json.dumps({"id": key, "files": sorted(names)}),
                               "meta": json.dumps({"source_id": key})}
        row.update(_files_row(names, key, lambda side, name, key=key: {f"{side}_image_path": f"{key}/{name}" if name else None}))
        for text in ("category.txt", "instruction.txt"):
            if text not in names or row.get("error_reason"):
                continue
            try:
                value = _read_text(fs, sample, text)
            except Rejected as e:
                row.update(error_reason=e.reason, error_message=f"{key}/{text}: {e}")
                continue
            row[text.removesuffix(".txt")] = value.strip() if text == "category.txt" else value
        if (table := batcher.add(**row)) is not None:
            yield table
    if (table := batcher.flush()) is not None:
        yield table


def _read_text(fs: pafs.FileSystem, sample: str, name: str, max_bytes: int = 1 << 20) -> str:
    """A sample's small text file: a regular file inside the sample's folder (a link out of it is
    refused), at most `max_bytes`, valid UTF-8; raises Rejected."""
    path = f"{sample}/{name}"
    if not inside(fs, path, sample):
        raise Rejected("path_outside_source", f"{name!r} is a link to a file outside the sample's folder")
    try:
        return read_file(fs, path, name, max_bytes, sample).decode("utf-8")
    except UnicodeDecodeError as e:
        raise Rejected("invalid_utf8", stable_message(e)) from None


def _members(tar: tarfile.TarFile) -> Iterator[tuple[str, bytes | None] | _LostRows]:
    """(name, bytes) of the archive's files in order, (name, None) for a link (its target is
    never followed, so a sample made of links is quarantined, not lost); where it breaks off
    (cut, corrupt), one _LostRows, then nothing. Folders carry no sample data: skipped."""
    try:
        for member in tar:
            if member.issym() or member.islnk():
                yield member.name, None
            elif member.isfile():
                data = tar.extractfile(member).read()
                if len(data) != member.size:  # a streamed archive that ends early reads short, silently
                    raise tarfile.ReadError(f"{member.name}: {len(data)} of {member.size} bytes")
                yield member.name, data
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        yield _LostRows(None, "truncated_archive", f"the archive breaks off here: {stable_message(e)}")


def _ends_cleanly(fs: pafs.FileSystem, path: str) -> bool:
    """A whole tar ends with two zero blocks; one cut at a member boundary streams as if it ended
    there, so the end is read too (one small ranged read)."""
    size = fs.get_file_info(path).size or 0
    if size < 1024 or size % 512:
        return False
    with fs.open_input_file(path) as f:
        return f.read_at(1024, size - 1024) == bytes(1024)


def plan_webdataset(source: str) -> list[dict[str, Any]]:
    fs, path = open_location(source)
    if fs.get_file_info(path).type == pafs.FileType.File:
        return [{"path": path}]
    return [{"path": i.path} for i in sorted(fs.get_file_info(pafs.FileSelector(path)), key=lambda i: i.path)
            if i.path.endswith(".tar")]


def read_webdataset(source: str, unit: dict[str, Any]) -> Iterator[pa.Table]:
    fs, _ = open_location(source)
    batcher = _Batcher(source, _parent(source))
    tar_name = posixpath.basename(unit["path"])

    def sample_row(key: str, members: dict[str, bytes], trouble: tuple[str, str] | None) -> dict[str, Any]:
        names = set(members)
        row: dict[str, Any] = {"source_ref": f"{tar_name}:{key}",
                               "record": json.dumps({"key": key, "members": sorted(names)}),
                               "meta": json.dumps({"source_id": key})}
        if trouble:
            return {**row, "error_reason": trouble[0], "error_message": trouble[1]}
        row.update(_files_row(names, key, lambda side, name: {f"{side}_image_bytes": members[name] if name else None}))
        if row.get("error_reason"):
            return row
        if "category.txt" in names:
            row["category"] = members["category.txt"].decode("utf-8", "replace").strip()
        if "instruction.txt" in names:
            try:
                row["instruction"] = members["instruction.txt"].decode("utf-8")
            except UnicodeDecodeError as e:
                row.update(error_reason="invalid_utf8", error_message=f"instruction.txt: {stable_message(e)}")
        return row

    # WebDataset writers keep a sample's members adjacent, but nothing enforces it: a tar written
    # out of key order would split an edit into a generation and an orphan input. So members are
    # grouped by key over the whole tar (the unit is one tar, held whole by the stage anyway), in
    # order of first appearance. A member that appears twice is refused, never a silent pick.
    samples: dict[str, dict[str, bytes]] = {}
    trouble: dict[str, tuple[str, str]] = {}
    lost: _LostRows | None = None
    last, in_order = None, True
    with fs.open_input_stream(unit["path"]) as stream:
        try:
            tar = tarfile.open(fileobj=stream, mode="r|")
        except (tarfile.TarError, EOFError, OSError) as e:  # empty, gzip under a .tar name, not a tar at all
            tar, lost = None, _LostRows(None, "unreadable_archive", f"{tar_name} is not a tar archive: {stable_message(e)}")
        with tar or contextlib.nullcontext():
            for member in _members(tar) if tar else ():
                if isinstance(member, _LostRows):
                    lost = member
                    break
                name, data = member
                dirname, base = posixpath.split(name)
                stem, _, suffix = base.partition(".")
                key = posixpath.join(dirname, stem)
                if key != last and key in samples:
                    in_order = False
                members = samples.setdefault(key, {})
                if suffix in members:
                    trouble[key] = ("duplicate_member", f"{name!r} appears twice in {tar_name}")
                if data is None:
                    trouble.setdefault(key, ("link_member", f"{name!r} is a link; a sample's members must be files"))
                members[suffix] = data or b""
                last = key
    if lost is None and samples and not _ends_cleanly(fs, unit["path"]):
        # streamed, a tar cut at a member boundary reads as complete: only its end tells
        lost = _LostRows(None, "truncated_archive", f"{tar_name} does not end with the tar end-of-archive blocks")
    if lost is not None:
        # The sample being read when the archive broke off may have lost members; in a tar out of
        # key order, any sample may have. Those are quarantined, never guessed complete.
        suspects = samples if not in_order else [last] if last is not None else []
        for key in suspects:
            trouble[key] = (lost.reason, f"{lost.message} (while reading {key!r})" if key == last else
                            f"{tar_name} is cut and not in key order: {key!r} may have lost members")
    for key, members in samples.items():
        if (table := batcher.add(**sample_row(key, members, trouble.get(key)))) is not None:
            yield table
    if lost is not None:  # what followed the cut is unknown: one row stands for it
        rest = {"source_ref": f"{tar_name}:after:{last}" if last else tar_name, "error_reason": lost.reason,
                "error_message": lost.message}
        if (table := batcher.add(**rest)) is not None:
            yield table
    if (table := batcher.flush()) is not None:
        yield table


def plan_source(source: str, fmt: str = "auto", columns: dict[str, str] | None = None,
                unit_rows: int = UNIT_ROWS) -> list[dict[str, Any]]:
    """The units of one source, in source order: {"source", "format", "columns", ...format fields}.
    Raises ValueError for a source that does not exist or a column mapping that does not fit."""
    fmt = detect_format(source) if fmt == "auto" else fmt
    columns = columns or {}
    unknown = sorted(set(columns) - set(CANONICAL_COLUMNS))
    if unknown:
        raise ValueError(f"--columns maps unknown field(s) {unknown}; fields: {CANONICAL_COLUMNS}")
    if columns and fmt in ("folder", "webdataset"):
        raise ValueError(f"--columns does not apply to {fmt} sources: their samples are files named "
                         "input.*, output.*, instruction.txt and category.txt")
    if fmt == "jsonl":
        units = plan_jsonl(source, unit_rows)
    elif fmt == "parquet":
        units = plan_parquet(source, columns, unit_rows)
    elif fmt == "hf":
        units = plan_hf_saved(source, columns)
    elif fmt == "folder":
        units = plan_folder(source, unit_rows)
    elif fmt == "webdataset":
        units = plan_webdataset(source)
    else:
        raise ValueError(f"unknown format {fmt!r}; choose auto or one of {FORMATS}")
    return [{"source": source, "format": fmt, "mapping": columns, **u} for u in units]


def read_unit(unit: dict[str, Any]) -> Iterator[pa.Table]:
    """Reference-row batches of one planned unit, in source order (runs on a worker)."""
    source, fmt, columns = unit["source"], unit["format"], unit["mapping"]
    if fmt == "jsonl":
        return read_jsonl(source, unit)
    if fmt == "parquet":
        return read_parquet(source, unit, columns)
    if fmt == "hf":
        return read_hf_saved(source, unit, columns)
    if fmt == "folder":
        return read_folder(source, unit)
    return read_webdataset(source, unit)


def read_source(source: str, fmt: str = "auto", columns: dict[str, str] | None = None) -> Iterator[pa.Table]:
    """Reference-row batches of a whole source, in source order (one process; for tools and tests)."""
    return itertools.chain.from_iterable(read_unit(u) for u in plan_source(source, fmt, columns))
