"""The dataset registry: immutable versions over a content-addressed shard store, on any pyarrow
filesystem.

Layout under the root (a local path or a URI such as s3://bucket/prefix):

    <dataset>/shards/<h[:2]>/<h>.arrow         Arrow IPC files named by their sha256 `h` (uncompressed:
                                               memory-mappable); written once, by whichever worker
                                               made them, straight to this final place
    <dataset>/versions/<id>/manifest.json      the VersionManifest; its presence makes the version
    <dataset>/tags/<tag>                       a version id; tags move, versions never change
    <dataset>/_work/<run>/                     completion markers of resumable runs; never read as data

A version lists its shards (rows and quarantine, both in the store) by path, size and hash. Its id
is a hash of its content (stage, schema, parent, shard hashes, counts), so the same inputs give the
same id. Publishing is writing the manifest: one atomic rename on a local disk, one PUT on an
object store. Nothing is copied or renamed at publish, a crash before it leaves only unreferenced
shards (never a half version), and versions whose shards have equal bytes share the files.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.ipc as ipc

from pipeline.storage import cache_root, cached_shard_name, open_location
from schemas import Counts, ShardInfo, VersionManifest, conform, get_schema, schema_name

DEFAULT_ROOT = "./paraforge-data"
TARGET_SHARD_BYTES = 256 * 1024 * 1024
# In every version id: a version of the content-addressed store never takes the id (and so the
# manifest) of a version written before it with per-version shard folders, which stays readable.
STORE_LAYOUT = "content-addressed/1"
# A run's lease (`DatasetRegistry.lease`): the file under its work folder, how long one beat keeps it
# live (many beats: a slow store or a paused driver does not lose it), and how far apart two
# machines' clocks may be when gc compares a shard's age with a run's start.
LEASE_FILE = "lease.json"
LEASE_TTL_S = 600.0
CLOCK_SKEW_S = 300.0
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_VERSION_LIKE = re.compile(r"^[0-9a-f]{1,16}$")  # a version id (16 hex digits) or a prefix of one
_SHARD_PATH = re.compile(r"^shards/[0-9a-f]{2}/[0-9a-f]{64}\.arrow$")
_OLD_SHARD_PATH = re.compile(r"^(shards|quarantine)/part-[0-9]{5}\.arrow$")  # per-version folders, read only


def resolve_root(root: str | None = None) -> str:
    return root or os.environ.get("PARAFORGE_REGISTRY") or DEFAULT_ROOT


def _check_name(kind: str, name: str) -> str:
    if not _NAME.match(name):
        raise ValueError(f"invalid {kind} name {name!r}: use letters, digits, '.', '_' and '-'")
    return name


def split_ref(ref: str) -> tuple[str, str | None]:
    """"NAME@VERSION_OR_TAG" -> (NAME, VERSION_OR_TAG); "NAME" -> (NAME, None)."""
    name, _, selector = ref.partition("@")
    return _check_name("dataset", name), (selector or None)


class DatasetRegistry:
    def __init__(self, root: str | None = None, filesystem: pafs.FileSystem | None = None):
        """`filesystem` overrides the one the root's URI implies (e.g. an fsspec one wrapped in
        `pyarrow.fs.PyFileSystem`); the root is then a path inside it."""
        self.root = resolve_root(root)
        # with `filesystem`, the root is a path inside it: only a URI root can carry credentials
        self.fs, self.base = (filesystem, self.root) if filesystem is not None else open_location(self.root, "registry")
        self.base = self.base.rstrip("/")

    def check_reachable(self) -> None:
        """One request before a run does any work (and before it starts Ray): a registry it cannot
        reach (wrong credentials or endpoint, a bucket that does not exist) is a ValueError of one
        line, not a traceback from a worker minutes later."""
        try:
            self.fs.get_file_info(self.base)
            if self.fs.type_name in ("s3", "gcs"):
                bucket = self.base.split("/", 1)[0]
                if self.fs.get_file_info(bucket).type == pafs.FileType.NotFound:
                    raise ValueError(f"the registry {self.root}: bucket {bucket!r} does not exist")
        except OSError as e:
            raise ValueError(f"cannot reach the registry {self.root}: {str(e).splitlines()[0]}") from None

    # -- paths and small files ---------------------------------------------------------------
    def _path(self, *parts: str) -> str:
        return "/".join((self.base, *parts))

    def _read_text(self, path: str) -> str:
        with self.fs.open_input_stream(path) as f:
            return f.read().decode()

    def _write_bytes(self, path: str, data: bytes | pa.Buffer) -> None:
        if self.fs.type_name not in ("s3", "gcs"):  # object stores have no folders to make
            self.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with self.fs.open_output_stream(path) as f:
            f.write(data)

    def exists(self, path: str) -> bool:
        return self.fs.get_file_info(path).type != pafs.FileType.NotFound

    def _children(self, path: str) -> list[str]:
        if not self.exists(path):
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(path))
        return sorted(info.base_name for info in infos)

    # -- reading -------------------------------------------------------------------------------
    def versions(self, dataset: str) -> list[VersionManifest]:
        """Published versions, oldest first. A folder without a manifest is not a version."""
        manifests = []
        for vid in self._children(self._path(dataset, "versions")):
            path = self._path(dataset, "versions", vid, "manifest.json")
            if self.exists(path):
                manifests.append(self.manifest(f"{dataset}@{vid}"))  # a broken one is named, not a traceback
        tags = self.tags(dataset)
        manifests = [dataclasses.replace(m, tags=sorted(t for t, v in tags.items() if v == m.version))
                     for m in manifests]
        return sorted(manifests, key=lambda m: (m.created_at, m.version))

    def tags(self, dataset: str) -> dict[str, str]:
        return {t: self._read_text(self._path(dataset, "tags", t)).strip()
                for t in self._children(self._path(dataset, "tags")) if not t.startswith(".")}

    def resolve(self, ref: str, schema: str | tuple[str, ...] | None = None) -> VersionManifest:
        """NAME (latest), NAME@VERSION, NAME@TAG or NAME@<unique version prefix>. With `schema` (one
        name or several a stage accepts), NAME alone means the latest version of such a schema (a
        stage's input lives beside its output), and a version of another schema is an error."""
        dataset, selector = split_ref(ref)
        versions = self.versions(dataset)
        if not versions:
            raise ValueError(f"dataset {dataset!r} has no versions in registry {self.root}")
        accepted = (schema,) if isinstance(schema, str) else schema
        wanted = " or ".join(accepted or ())
        if selector is None:
            candidates = [m for m in versions if accepted is None or m.schema in accepted]
            if not candidates:
                raise ValueError(f"dataset {dataset!r} has no {wanted} version in registry {self.root}")
            return candidates[-1]
        found = self._select(ref, dataset, selector, versions)
        if accepted is not None and found.schema not in accepted:
            raise ValueError(f"{found.ref} has schema {found.schema}; a {wanted} version is needed here")
        return found

    def manifest(self, ref: str) -> VersionManifest:
        """The manifest of an exact NAME@VERSION: one read, no listing (what workers use)."""
        dataset, version = split_ref(ref)
        path = self._path(dataset, "versions", _check_name("version", str(version)), "manifest.json")
        try:
            return VersionManifest.from_json(self._read_text(path))
        except ValueError as e:  # also a file that is not JSON at all
            raise ValueError(f"{path}: {e}") from None

    def _select(self, ref: str, dataset: str, selector: str, versions: list[VersionManifest]) -> VersionManifest:
        """A full version id first (nothing shadows it), then a tag, then a unique id prefix; a
        selector that is both a tag and a prefix (a tag from before tags were checked) is refused."""
        exact = [m for m in versions if m.version == selector]
        if exact:
            return exact[0]
        known = ", ".join(m.version for m in versions)
        matches = [m for m in versions if m.version.startswith(selector)]
        tagged = self.tags(dataset).get(selector)
        if tagged is not None:
            if matches:
                raise ValueError(f"{ref!r}: {selector!r} is both a tag and a version id prefix in {dataset!r}; "
                                 f"give the full version id (versions: {known})")
            matches = [m for m in versions if m.version == tagged]
        if len(matches) != 1:
            what = "no version or tag" if not matches else "an ambiguous version prefix"
            raise ValueError(f"{ref!r}: {what} {selector!r} in {dataset!r} (versions: {known})")
        return matches[0]

    def shard_paths(self, manifest: VersionManifest, quarantine: bool = False) -> list[str]:
        shards = manifest.quarantine_shards if quarantine else manifest.shards
        return [self.shard_path(manifest.dataset, s, manifest.version) for s in shards]

    def shard_path(self, dataset: str, shard: ShardInfo, version: str | None = None) -> str:
        if _OLD_SHARD_PATH.match(shard.path) and version:  # a version from before the store: its own folder
            return self._path(dataset, "versions", version, shard.path)
        if not _SHARD_PATH.match(shard.path):  # a manifest names only files of its own store
            raise ValueError(f"{dataset}: shard path {shard.path!r} is not in the shard store")
        return self._path(dataset, shard.path)

    def shard_sizes(self, dataset: str) -> dict[str, int]:
        """{shard path as a manifest names it: bytes} of every file in the dataset's shard store, from
        one recursive listing (pages of 1,000 keys on an object store)."""
        start = len(self._path(dataset)) + 1
        return {i.path[start:]: i.size for i in self._files(self._path(dataset, "shards"))}

    def local_shard_paths(self, manifest: VersionManifest, cache: str | None = None, verify: bool = False) -> list[str]:
        """Paths a trainer can memory-map: the shards themselves on a local disk; from anywhere else
        copies in a local cache named by their sha256 (checked once, as they arrive), so a cached
        shard is never stale and is shared by every version, run and rank on the machine. Trainers
        read rows in a new random order every epoch: one local copy beats re-reading the store.
        `verify`: also re-hash the copies not fetched just now (a fetch hashes as it copies), so
        every byte is checked once."""
        if isinstance(self.fs, pafs.LocalFileSystem):
            paths = self.shard_paths(manifest)
            problems = self.verify(manifest, paths) if verify else []
        else:
            folder = os.path.join(cache or cache_root(), "shards")
            os.makedirs(folder, exist_ok=True)
            paths, cached = [], []
            for shard, remote in zip(manifest.shards, self.shard_paths(manifest)):
                local = os.path.join(folder, cached_shard_name(shard.sha256))
                if os.path.exists(local) and os.path.getsize(local) == shard.bytes:
                    cached.append((shard, local))
                else:
                    self._fetch(remote, local, shard)
                paths.append(local)
            problems = self._check(cached, pafs.LocalFileSystem()) if verify else []
        if problems:
            raise ValueError(f"{manifest.ref}: " + "; ".join(problems[:3]))
        return paths

    def _fetch(self, remote: str, local: str, shard: ShardInfo) -> None:
        tmp = f"{local}.{uuid.uuid4().hex}.tmp"
        with open(tmp, "wb") as dst:
            problem = _hash_stream(self.fs, remote, shard, dst)
        if problem:
            os.remove(tmp)
            raise ValueError(problem)
        os.replace(tmp, local)  # ranks fetching at once: each renames a whole copy, none sees half

    def verify(self, manifest: VersionManifest, paths: list[str] | None = None,
               shards: list[int] | None = None) -> list[str]:
        """Every shard of the version (rows and quarantine) re-read and hashed against its manifest
        entry; the problems found, empty when all hold. `paths`: local copies of the row shards to
        check instead; `shards`: only these row shards (by index), for checks split across workers."""
        if paths is not None:
            return self._check(list(zip(manifest.shards, paths)), pafs.LocalFileSystem())
        if shards is not None:
            return self._check([(manifest.shards[i], self.shard_path(manifest.dataset, manifest.shards[i],
                                                                     manifest.version)) for i in shards], self.fs)
        return self._check([*zip(manifest.shards, self.shard_paths(manifest)),
                            *zip(manifest.quarantine_shards, self.shard_paths(manifest, quarantine=True))], self.fs)

    @staticmethod
    def _check(pairs: list[tuple[ShardInfo, str]], fs: pafs.FileSystem) -> list[str]:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:  # hashlib releases the GIL on large reads
            return [p for p in pool.map(lambda pair: _hash_stream(fs, pair[1], pair[0]), pairs) if p]

    def iter_batches(self, manifest: VersionManifest, columns: list[str] | None = None,
                     quarantine: bool = False) -> Iterator[pa.RecordBatch]:
        """The version's record batches; with `columns`, only those columns' buffers are read (the
        text of image-bearing shards costs the text, not the images). A version's shards share one
        layout, so the columns are looked up once, in its first shard."""
        options = None
        for path in self.shard_paths(manifest, quarantine):
            with self.fs.open_input_file(path) as f:
                if columns and options is None:
                    names = ipc.open_file(f).schema.names
                    missing = [c for c in columns if c not in names]
                    if missing:
                        raise KeyError(f"{path} has no column(s) {missing}")
                    options = ipc.IpcReadOptions(included_fields=sorted(names.index(c) for c in set(columns)))
                reader = ipc.open_file(f, options=options)
                for i in range(reader.num_record_batches):
                    batch = reader.get_batch(i)
                    yield batch.select(columns) if columns else batch

    def stored_names(self, manifest: VersionManifest) -> list[str]:
        """The columns the version's shards hold (its first shard's; the schema's when it has none):
        a column added to a schema later is absent from versions written before."""
        paths = self.shard_paths(manifest)
        if not paths:
            return get_schema(manifest.schema).names
        with self.fs.open_input_file(paths[0]) as f:
            return ipc.open_file(f).schema.names

    def rows_by_id(self, manifest: VersionManifest, sample_ids: list[str],
                   columns: list[str]) -> dict[str, dict[str, Any]]:
        """The rows of `sample_ids` (as dicts of `columns` + sample_id), reading record batches in
        order and stopping once every one is found: a few rows' images cost a few batches."""
        wanted = pa.array(sample_ids, pa.string())
        found: dict[str, dict[str, Any]] = {}
        for batch in self.iter_batches(manifest, ["sample_id", *(c for c in columns if c != "sample_id")]):
            found.update((r["sample_id"], r) for r in batch.filter(pc.is_in(batch["sample_id"], wanted)).to_pylist())
            if len(found) == len(set(sample_ids)):
                break
        return found

    def read_rows(self, manifest: VersionManifest, start: int, length: int,
                  columns: list[str] | None = None) -> pa.Table:
        """Rows [start, start + length) of the version, in order, reading only the shards and record
        batches they span (a chunk of a resumable stage may cross shard boundaries)."""
        batches, offset = [], 0
        for info, path in zip(manifest.shards, self.shard_paths(manifest)):
            if offset + info.rows > start and offset < start + length:
                with self.fs.open_input_file(path) as f:
                    reader = ipc.open_file(f)
                    for i in range(reader.num_record_batches):
                        batch = reader.get_batch(i)
                        lo, hi = max(start - offset, 0), min(start + length - offset, batch.num_rows)
                        if lo < hi:
                            batches.append(batch.slice(lo, hi - lo).select(columns) if columns else
                                           batch.slice(lo, hi - lo))
                        offset += batch.num_rows
            else:
                offset += info.rows
            if offset >= start + length:
                break
        schema = get_schema(manifest.schema)
        if not batches:
            return pa.Table.from_batches([], schema=pa.schema([schema.field(c) for c in columns]) if columns
                                         else schema)
        return pa.Table.from_batches(batches)

    def write_atomic(self, path: str, data: bytes | pa.Buffer) -> None:
        """Readers see the whole file or none: on a local disk written under a unique temporary
        name and renamed; on an object store one PUT is already atomic."""
        if not isinstance(self.fs, pafs.LocalFileSystem):
            self._write_bytes(path, data)
            return
        tmp = f"{path}.{uuid.uuid4().hex}.tmp"
        self._write_bytes(tmp, data)
        os.replace(tmp, path)

    def read_text(self, path: str) -> str:
        return self._read_text(path)

    def work_dir(self, dataset: str, run_key: str) -> str:
        """A durable scratch folder for resumable stages (completed chunks live here)."""
        return self._path(_check_name("dataset", dataset), "_work", run_key)

    def read_table(self, manifest: VersionManifest, columns: list[str] | None = None,
                   quarantine: bool = False) -> pa.Table:
        schema = get_schema("quarantine/1" if quarantine else manifest.schema)
        batches = list(self.iter_batches(manifest, columns, quarantine))
        if batches:
            return pa.Table.from_batches(batches)
        return pa.Table.from_batches([], schema=pa.schema([schema.field(c) for c in columns])
                                     if columns else schema)

    # -- writing -------------------------------------------------------------------------------
    def put_shard(self, dataset: str, data: bytes | pa.Buffer, rows: int) -> ShardInfo:
        """Store one encoded shard under its hash: the same bytes stored twice are one file. It is
        written even when present (same name, same bytes), which renews its age, so `collect_garbage`
        never deletes a shard a run in flight has just produced again."""
        digest = hashlib.sha256(data).hexdigest()
        relative = f"shards/{digest[:2]}/{digest}.arrow"
        self.write_atomic(self._path(_check_name("dataset", dataset), relative), data)
        return ShardInfo(relative, rows, len(data), digest)

    def writer(self, dataset: str, stage: str, schema: pa.Schema, parent: str | None = None,
               target_shard_bytes: int = TARGET_SHARD_BYTES) -> "VersionWriter":
        return VersionWriter(self, _check_name("dataset", dataset), stage, schema, parent,
                             target_shard_bytes)

    def tag(self, ref: str, tag: str) -> VersionManifest:
        """Points `tag` at a version. A tag may not look like a version id or a prefix of one (1 to 16
        hex digits), so no tag can shadow a version; the write is atomic (readers see the old
        version or the new, never a torn file)."""
        if _VERSION_LIKE.match(_check_name("tag", tag)):
            raise ValueError(f"tag {tag!r} looks like a version id or a prefix of one; "
                             "use a name with a letter beyond a-f (best, v2, release-1)")
        manifest = self.resolve(ref)
        path = self._path(manifest.dataset, "tags", tag)
        if self.fs.type_name in ("s3", "gcs"):  # an object PUT is atomic already
            self._write_bytes(path, manifest.version.encode())
        else:
            temporary = self._path(manifest.dataset, "tags", f".{tag}.{uuid.uuid4().hex}.tmp")  # no tag starts with "."
            self._write_bytes(temporary, manifest.version.encode())
            self.fs.move(temporary, path)  # a rename
        return self.resolve(f"{manifest.dataset}@{manifest.version}")

    def publish(self, dataset: str, stage: str, schema: str, parent: str | None, counts: Counts,
                shards: list[ShardInfo], quarantine_shards: list[ShardInfo], lineage: dict[str, Any],
                stats: dict[str, Any] | None = None, rule: dict[str, Any] | None = None) -> VersionManifest:
        """Make a version of shards already in the store: write its manifest, the one commit point.
        Publishing content that was published before returns the existing version unchanged.
        `rule`: what decided the content beyond its input (a filter's thresholds), part of the
        version's identity, so two rules that happen to keep the same rows are two versions."""
        if not counts.reconciles():
            raise AssertionError(f"row accounting does not reconcile: {counts.line()}")
        written, kept = sum(s.rows for s in shards), sum(s.rows for s in quarantine_shards)
        assert (written, kept) == (counts.output, counts.quarantined), (written, kept, counts)
        identity = {"store": STORE_LAYOUT, "dataset": dataset, "stage": stage, "schema": schema, "parent": parent,
                    "counts": dataclasses.asdict(counts), "shards": [s.sha256 for s in shards],
                    "quarantine": [s.sha256 for s in quarantine_shards], **({"rule": rule} if rule else {})}
        version = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
        path = self._path(_check_name("dataset", dataset), "versions", version, "manifest.json")
        if self.exists(path):  # versions are immutable
            return VersionManifest.from_json(self._read_text(path))
        sizes = self.shard_sizes(dataset)  # one listing: never a version naming a shard that is gone
        gone = [s.path for s in [*shards, *quarantine_shards] if sizes.get(s.path) != s.bytes]
        if gone:
            raise ValueError(f"{dataset}: {len(gone)} shard(s) this run wrote are gone or changed ({gone[0]}, ...): "
                             "run it again (its units whose shards are missing are redone)")
        manifest = VersionManifest(
            dataset=dataset, version=version, stage=stage, schema=schema, parent=parent,
            created_at=dt.datetime.now(dt.timezone.utc).isoformat(), counts=counts, shards=list(shards),
            quarantine_shards=list(quarantine_shards), lineage=lineage, stats=stats or {})
        self.write_atomic(path, manifest.to_json().encode())
        return manifest

    @contextlib.contextmanager
    def lease(self, work: str, heartbeat_s: float = 30.0) -> Iterator[None]:
        """Hold a run's lease while it is alive: `<work>/lease.json` says when the run started and
        until when the lease holds (LEASE_TTL_S ahead), renewed every `heartbeat_s` by a thread and
        removed at the end. `collect_garbage` spares everything a live lease's run may publish; a
        killed run's lease lapses by itself."""
        path, started = f"{work}/{LEASE_FILE}", time.time()

        def renew() -> None:
            self.write_atomic(path, json.dumps({"started": started, "expires": time.time() + LEASE_TTL_S,
                                                "host": socket.gethostname(), "pid": os.getpid()}).encode())

        renew()
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(heartbeat_s):
                with contextlib.suppress(OSError):  # a missed beat is retried; the TTL spans many
                    renew()

        thread = threading.Thread(target=beat, name="lease", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            with contextlib.suppress(OSError):
                self.fs.delete_file(path)

    def _live_runs(self, work_files: list[pafs.FileInfo]) -> dict[str, float]:
        """{work folder: start time} of the runs whose lease holds now. A lease that cannot be read
        (cut mid-write) counts as live from the beginning of time while its file is younger than
        the TTL: sparing too much for a while is safe, deleting a live run's shards is not."""
        live = {}
        for info in work_files:
            if info.base_name != LEASE_FILE:
                continue
            try:
                lease = json.loads(self._read_text(info.path))
                expires, started = float(lease["expires"]), float(lease["started"])
            except (OSError, ValueError, TypeError, KeyError):
                expires, started = (info.mtime.timestamp() if info.mtime else 0.0) + LEASE_TTL_S, 0.0
            if expires > time.time():
                live[info.path.rsplit("/", 1)[0]] = started
        return live

    def collect_garbage(self, dataset: str, older_than_s: float, dry_run: bool = False) -> dict[str, int]:
        """Delete what no version needs: shards no manifest lists (from runs that never published,
        units rewritten by dedup) and the work files of finished or abandoned runs (a rerun of such
        a run redoes its work and publishes the same version). Spared: anything younger than
        `older_than_s`, and whatever a live run (`lease`) may publish: its work folder, the shards
        its completion markers name (resumed units' shards are older than the run) and every shard
        written or renewed since it started (a unit's shards exist before its marker, however long
        the unit takes; a shard written again is renewed, `put_shard`)."""
        cutoff = time.time() - older_than_s
        work_root, shard_root = self._path(dataset, "_work"), self._path(dataset, "shards")
        # Shards are listed before leases are read: a run that starts after the listing renews
        # what it writes, and `publish` refuses a version naming a shard that is gone.
        shard_files = self._files(shard_root)
        work_files = self._files(work_root)
        live = self._live_runs(work_files)
        named: set[str] = set()
        for folder in live:
            for info in work_files:
                if info.path.startswith(f"{folder}/units/") and info.path.endswith(".json"):
                    with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
                        marker = json.loads(self._read_text(info.path))
                        named.update(s["path"] for s in marker["shards"] + marker["quarantine_shards"])
        shard_cutoff = min([cutoff, *(started - CLOCK_SKEW_S for started in live.values())])
        referenced = {s.path for m in self.versions(dataset) for s in m.shards + m.quarantine_shards}
        found = {"shards": 0, "shards_kept": 0, "bytes": 0, "work_files": 0, "live_runs": len(live)}
        start = len(self._path(dataset)) + 1
        for info in shard_files:
            relative = info.path[start:]
            if relative in referenced or relative in named:
                found["shards_kept"] += 1
            elif info.mtime is None or info.mtime.timestamp() < shard_cutoff:
                self._collect(info, "shards", found, dry_run)
        for info in work_files:
            in_live_run = any(info.path.startswith(f"{folder}/") for folder in live)
            if not in_live_run and info.mtime is not None and info.mtime.timestamp() < cutoff:
                self._collect(info, "work_files", found, dry_run)
        return found

    def _files(self, root: str) -> list[pafs.FileInfo]:
        if not self.exists(root):
            return []
        return [i for i in self.fs.get_file_info(pafs.FileSelector(root, recursive=True)) if i.type == pafs.FileType.File]

    def _collect(self, info: pafs.FileInfo, kind: str, found: dict[str, int], dry_run: bool) -> None:
        found[kind] += 1
        found["bytes"] += info.size or 0
        if not dry_run:
            with contextlib.suppress(FileNotFoundError):  # two collectors at once
                self.fs.delete_file(info.path)

    # -- comparing -----------------------------------------------------------------------------
    def diff(self, ref_a: str, ref_b: str, examples: int = 10) -> dict[str, Any]:
        """Rows added, removed and changed from A to B, keyed by sample_id. "Changed" compares the
        content columns both versions have (so a raw version diffs cleanly against its annotated
        child); where a row was read from (`source`, `source_ref`) is provenance, not content."""
        a, b = self.resolve(ref_a), self.resolve(ref_b)
        theirs = self.stored_names(b)
        common = [c for c in self.stored_names(a) if c in theirs and c not in ("source", "source_ref")]
        frames = [_row_hashes(self.read_table(m, common)) for m in (a, b)]
        joined = frames[0].join(frames[1], on="sample_id", how="full", suffix="_b", coalesce=True)
        added = joined.filter(pl.col("row_hash").is_null())["sample_id"]
        removed = joined.filter(pl.col("row_hash_b").is_null())["sample_id"]
        both = joined.filter(pl.col("row_hash").is_not_null() & pl.col("row_hash_b").is_not_null())
        changed = both.filter(pl.col("row_hash") != pl.col("row_hash_b"))["sample_id"]
        return {
            "a": a.ref, "b": b.ref, "compared_columns": common,
            "added": len(added), "removed": len(removed), "changed": len(changed),
            "unchanged": len(both) - len(changed),
            "examples": {"added": sorted(added.to_list())[:examples],
                         "removed": sorted(removed.to_list())[:examples],
                         "changed": sorted(changed.to_list())[:examples]},
        }


def _hash_stream(fs: pafs.FileSystem, path: str, shard: ShardInfo, copy_to=None) -> str | None:
    """Read `path` once (copying it to `copy_to` if given) and compare size and sha256 with the
    manifest's entry: None when they hold, else what is wrong."""
    digest, size = hashlib.sha256(), 0
    try:
        with fs.open_input_stream(path) as f:
            while chunk := f.read(8 << 20):
                digest.update(chunk)
                size += len(chunk)
                if copy_to is not None:
                    copy_to.write(chunk)
    except OSError as e:
        return f"{path}: unreadable: {e}"
    if size != shard.bytes or digest.hexdigest() != shard.sha256:
        return (f"{path}: {size} bytes hashing to {digest.hexdigest()[:16]}, the manifest says "
                f"{shard.bytes} bytes, {shard.sha256[:16]}: the shard is corrupt")
    return None


def _row_hashes(table: pa.Table) -> pl.DataFrame:
    df = pl.from_arrow(table)
    others = [c for c in df.columns if c != "sample_id"]
    if not others:
        return df.select("sample_id", pl.lit(0, pl.UInt64).alias("row_hash"))
    return df.select("sample_id", pl.struct(others).hash(seed=0).alias("row_hash"))


def _row_bytes(table: pa.Table) -> np.ndarray:
    """Approximate encoded size of each row, from column types and value lengths alone."""
    sizes = np.zeros(table.num_rows, dtype=np.int64)
    for column in table.columns:
        sizes += _value_bytes(column)
    return sizes


def _value_bytes(column: pa.ChunkedArray | pa.Array) -> np.ndarray | int:
    t = column.type
    if pa.types.is_binary(t) or pa.types.is_string(t) or pa.types.is_large_binary(t):
        return pc.fill_null(pc.binary_length(column), 0).to_numpy() + 4
    if pa.types.is_fixed_size_list(t):
        return t.list_size * max(t.value_type.bit_width // 8, 1)
    if pa.types.is_list(t):
        return pc.fill_null(pc.list_value_length(column), 0).to_numpy() * max(t.value_type.bit_width // 8, 1) + 4
    if pa.types.is_struct(t):  # the scores and the judge's answers: the sum of the fields
        return sum(_value_bytes(pc.struct_field(column, [i])) for i in range(t.num_fields))
    return max(getattr(t, "bit_width", 64) // 8, 1)


class ShardWriter:
    """Buffers rows and stores Arrow IPC shards of about `target_bytes` each in the shard store.

    A shard closes at the first row where the running size reaches the target, with sizes computed
    per row, so shard bytes (and thus shard names and the version id) depend only on the rows, never
    on how upstream batches happened to be cut. Used on workers (each unit of a stage writes its
    own shards) and by VersionWriter."""

    BATCH_ROWS = 1024

    def __init__(self, registry: DatasetRegistry, dataset: str, schema: pa.Schema, target_bytes: int):
        self.registry, self.dataset = registry, dataset
        self.schema, self.target_bytes = schema, target_bytes
        self.pending: list[pa.Table] = []
        self.pending_bytes = 0
        self.shards: list[ShardInfo] = []

    def add(self, table: pa.Table) -> None:
        table = conform(table, self.schema)
        while table.num_rows:
            running = self.pending_bytes + np.cumsum(_row_bytes(table))
            full = int(np.searchsorted(running, self.target_bytes))  # first row reaching the target
            if full >= table.num_rows:
                self.pending.append(table)
                self.pending_bytes = int(running[-1])
                return
            self.pending.append(table.slice(0, full + 1))
            self.flush()
            table = table.slice(full + 1)

    def flush(self) -> list[ShardInfo]:
        if self.pending:
            pending = pa.concat_tables(self.pending)
            # Fresh contiguous buffers: a slice keeps its parent's buffers, and the IPC writer would
            # then write different bytes for the same rows.
            table = pa.Table.from_arrays([pa.concat_arrays(c.chunks) if c.num_chunks else pa.array([], c.type)
                                          for c in pending.columns], schema=self.schema)
            self.pending, self.pending_bytes = [], 0
            sink = pa.BufferOutputStream()  # its buffer is handed on without a copy (shards run to GBs)
            with ipc.new_file(sink, self.schema) as writer:
                writer.write_table(table, max_chunksize=self.BATCH_ROWS)
            self.shards.append(self.registry.put_shard(self.dataset, sink.getvalue(), table.num_rows))
        return self.shards


class VersionWriter:
    """Writes a version from one process (tests, benchmarks, small tools; the stages write their
    shards on workers and call `DatasetRegistry.publish`).

        with registry.writer("demo", "ingest", RAW) as w:
            w.write(table); w.quarantine(reason=..., message=..., source=..., source_ref=...)
            manifest = w.publish(counts, lineage)
    """

    def __init__(self, registry: DatasetRegistry, dataset: str, stage: str, schema: pa.Schema,
                 parent: str | None, target_shard_bytes: int):
        self.registry, self.dataset, self.stage, self.parent = registry, dataset, stage, parent
        self.schema = schema
        self.rows = ShardWriter(registry, dataset, schema, target_shard_bytes)
        self.rejected = ShardWriter(registry, dataset, get_schema("quarantine/1"), target_shard_bytes)

    def write(self, table: pa.Table) -> None:
        self.rows.add(table)

    def quarantine(self, *, reason, message, source, source_ref, sample_id=None, record=None) -> None:
        """Keep rejected rows (columns as arrays or lists), stamped with this version's stage."""
        self.rejected.add(quarantine_table(self.stage, reason=reason, message=message, source=source,
                                           source_ref=source_ref, sample_id=sample_id, record=record))

    def publish(self, counts: Counts, lineage: dict[str, Any],
                stats: dict[str, Any] | None = None) -> VersionManifest:
        if not counts.reconciles():
            raise AssertionError(f"row accounting does not reconcile: {counts.line()}")
        return self.registry.publish(self.dataset, self.stage, schema_name(self.schema), self.parent, counts,
                                     self.rows.flush(), self.rejected.flush(), lineage, stats)

    def __enter__(self) -> "VersionWriter":
        return self

    def __exit__(self, *exc) -> None:
        pass  # unpublished shards are unreferenced files in the store; nothing reads them


def quarantine_table(stage: str, *, reason, message, source, source_ref, sample_id=None, record=None) -> pa.Table:
    """Rejected rows (columns as arrays or lists) in the quarantine/1 layout, stamped with `stage`."""
    n = len(reason)
    nulls = pa.nulls(n, pa.string())
    return pa.table({
        "stage": pa.array([stage] * n, pa.string()), "reason": reason, "message": message,
        "source": source, "source_ref": source_ref,
        "sample_id": nulls if sample_id is None else sample_id, "record": nulls if record is None else record})
