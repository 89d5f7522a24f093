"""Run folders on any pyarrow filesystem (a local path, or s3://, gs://, hdfs://); model folders
given by URI are fetched through them by trainer/model_io.py.

DeepSpeed, torch and TensorBoard write local files, so a run always works in a local folder. Where
`out_dir` is a URI, that folder is a mirror in the cache (`$PARAFORGE_CACHE/runs/<hash of the
URI>`) and the URI is the run: each checkpoint is uploaded by every node (each holds its own
ranks' optimizer shards), marked `done` only after every upload finished, and the oldest pruned;
the small files (config, metrics, sequence layout, reward statistics, TensorBoard) follow. A run
started on another machine downloads them and the newest complete checkpoint, then resumes. A
local `out_dir` (a shared ReadWriteMany volume included) is used as it is, with no copy.

Why not DeepSpeed's own checkpoint engines: they write local or Nebula storage only, and a
checkpoint on a node's disk is lost with the node.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import re
import shutil
import uuid
from pathlib import Path

import pyarrow.fs as pafs

from pipeline.storage import cache_root, confined, is_uri, open_location

DONE = "done"  # written last into a checkpoint folder: a checkpoint without it is never read
_TAG = re.compile(r"^step-(\d+)$")


def sort_tags(tags: list[str]) -> list[str]:
    """`step-N` tags, oldest first; anything else in the folder is not ours."""
    return sorted((t for t in tags if _TAG.match(t)), key=lambda t: int(_TAG.match(t).group(1)))


def _mirror(uri: str, kind: str) -> Path:
    return cache_root() / kind / hashlib.sha256(uri.rstrip("/").encode()).hexdigest()[:16]


class RunDir:
    """A run folder: `local` is where the process writes; `uri` (None for a local run) is the run."""

    def __init__(self, out_dir: str | Path, mirror: str = "runs"):
        out_dir = str(out_dir)
        if is_uri(out_dir):
            self.uri = out_dir.rstrip("/")
            self.fs, self.base = open_location(self.uri, "run folder")
            self.local = _mirror(self.uri, mirror)
        else:
            self.uri, self.fs, self.base = None, None, ""
            self.local = Path(out_dir.removeprefix("file://"))

    @property
    def remote(self) -> bool:
        return self.uri is not None

    def __str__(self) -> str:
        return self.uri or str(self.local)

    def _remote(self, relative: str) -> str:
        return f"{self.base}/{relative}" if relative else self.base

    # -- what exists --------------------------------------------------------------------------
    def checkpoint_tags(self) -> list[str]:
        """The complete checkpoints (folders holding a `done` marker) where the run lives, oldest first."""
        if not self.remote:
            folder = self.local / "checkpoints"
            return sort_tags([p.name for p in folder.iterdir() if (p / DONE).exists()] if folder.is_dir() else [])
        listing = self.fs.get_file_info(pafs.FileSelector(self._remote("checkpoints"), allow_not_found=True))
        tags = [info.base_name for info in listing if info.type == pafs.FileType.Directory]
        markers = self.fs.get_file_info([self._remote(f"checkpoints/{t}/{DONE}") for t in tags]) if tags else []
        return sort_tags([t for t, m in zip(tags, markers) if m.type == pafs.FileType.File])

    # -- copies between the mirror and the run ------------------------------------------------
    def upload(self, relative: str) -> None:
        """Copy a file or folder of the mirror to the run (nothing to do for a local run)."""
        source = self.local / relative
        if not self.remote or not source.exists():
            return
        files = [p for p in sorted(source.rglob("*")) if p.is_file()] if source.is_dir() else [source]
        pairs = [(str(p), self._remote(p.relative_to(self.local).as_posix())) for p in files]
        if self.fs.type_name not in ("s3", "gcs"):  # object stores have no folders to make
            for folder in {remote.rsplit("/", 1)[0] for _, remote in pairs}:
                self.fs.create_dir(folder, recursive=True)
        _copy(pairs, pafs.LocalFileSystem(), self.fs)

    def download(self, relative: str) -> None:
        if not self.remote:
            return
        target = confined(self.local, relative) if relative else self.local  # `relative` may come from a listing
        info = self.fs.get_file_info(self._remote(relative))
        if info.type == pafs.FileType.NotFound:
            return
        if target.exists():
            shutil.rmtree(target) if target.is_dir() else target.unlink()
        _download(self.fs, self._remote(relative), target, info.type == pafs.FileType.Directory)

    def mark_done(self, tag: str) -> None:
        """The checkpoint's `done` marker, holding a random id: a local copy counts as the run's
        only while its marker holds the same id (a run deleted and started again under the same
        URI writes new ids, so a stale copy in the cache is never taken for it)."""
        marker = uuid.uuid4().hex.encode()
        (self.local / "checkpoints" / tag).mkdir(parents=True, exist_ok=True)
        (self.local / "checkpoints" / tag / DONE).write_bytes(marker)
        if self.remote:
            with self.fs.open_output_stream(self._remote(f"checkpoints/{tag}/{DONE}")) as f:
                f.write(marker)

    def has_local_copy(self, tag: str) -> bool:
        """The mirror holds this checkpoint of the run, whole (its marker matches the run's)."""
        local = self.local / "checkpoints" / tag / DONE
        if not local.exists():
            return False
        if not self.remote:
            return True
        try:
            with self.fs.open_input_stream(self._remote(f"checkpoints/{tag}/{DONE}")) as f:
                return f.read() == local.read_bytes()
        except FileNotFoundError:
            return False

    def delete_local(self, relative: str) -> None:
        shutil.rmtree(self.local / relative, ignore_errors=True)

    def delete(self, relative: str) -> None:
        shutil.rmtree(self.local / relative, ignore_errors=True)
        if self.remote:
            self.fs.delete_dir(self._remote(relative))

    # -- the small files ----------------------------------------------------------------------
    def push_files(self) -> None:
        """The run's small files: every top-level file and the TensorBoard folder."""
        if self.remote:
            for path in self.local.iterdir():
                if path.is_file():
                    self.upload(path.name)
            self.upload("tensorboard")

    def pull(self, keep_checkpoint: str | None = None) -> None:
        """Make the mirror the run's copy before a (re)start: the run's small files replace the
        mirror's, and a leftover from another run of the same URI (a deleted and restarted run) is
        cleared; a complete local copy of the checkpoint `keep_checkpoint` is kept, not fetched again."""
        if not self.remote:
            return
        self.local.mkdir(parents=True, exist_ok=True)
        for path in self.local.iterdir():
            if path.name == "checkpoints":
                for tag in path.iterdir():
                    if tag.name != keep_checkpoint or not self.has_local_copy(tag.name):
                        shutil.rmtree(tag, ignore_errors=True) if tag.is_dir() else tag.unlink()
            elif path.name != "reference":
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        listing = self.fs.get_file_info(pafs.FileSelector(self.base, allow_not_found=True))
        if "reference" not in {info.base_name for info in listing}:  # ParaRL's frozen model: kept only if the run has it
            shutil.rmtree(self.local / "reference", ignore_errors=True)
        for info in listing:
            if info.type == pafs.FileType.File or info.base_name == "tensorboard":
                self.download(info.base_name)


def _download(fs: pafs.FileSystem, remote: str, local: Path, folder: bool) -> None:
    """A file, or a folder's files (object stores list no folders, so each file's is made here)."""
    if not folder:
        pairs = [(remote, local)]
    else:
        listing = fs.get_file_info(pafs.FileSelector(remote, recursive=True))
        # object names are whatever the store holds: each is confined to the target folder
        pairs = [(i.path, confined(local, i.path[len(remote):].removeprefix("/")))
                 for i in listing if i.type == pafs.FileType.File]
    for _, path in pairs:
        path.parent.mkdir(parents=True, exist_ok=True)
    _copy([(src, str(dst)) for src, dst in pairs], fs, pafs.LocalFileSystem())


def _copy(pairs: list[tuple[str, str]], source: pafs.FileSystem, destination: pafs.FileSystem) -> None:
    """Several files at a time: a checkpoint is one large file per rank, each a multipart stream."""
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda pair: pafs.copy_files(pair[0], pair[1], source_filesystem=source,
                                                   destination_filesystem=destination), pairs))
