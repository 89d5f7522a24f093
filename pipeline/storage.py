"""Storage locations, opened in one place: a local path or a pyarrow filesystem URI (s3://, gs://,
hdfs://), the machine's cache folder, and local paths built from names that came from elsewhere.

Two rules hold for every caller (the registry, sources, run and model folders):
- A URI never carries credentials (`s3://KEY:SECRET@bucket/...`): locations are recorded in
  manifests and run configs and printed in errors, so such a URI is refused before anything runs.
  Credentials come from the environment or the machine's role, as pyarrow reads them.
- A local path built from a remote or recorded name (an object listing, a manifest) stays inside
  the folder it is meant for: a name that is empty, absolute, or has an empty, `.` or `..` segment
  is refused, so a model folder whose object names hold `../` cannot write outside the cache.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pyarrow.fs as pafs

_USERINFO = re.compile(r"^([a-z][a-z0-9+.-]*)://[^/?#]*@", re.I)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def is_uri(location: str | Path) -> bool:
    return "://" in str(location) and not str(location).startswith("file://")


def check_location(location: str | Path, what: str = "location") -> None:
    """Raises ValueError for a URI with credentials in it; the message does not repeat them."""
    found = _USERINFO.match(str(location))
    if found:
        raise ValueError(f"{what}: a URI with credentials in it ({found.group(1)}://<credentials>@...) is refused: "
                         "locations are recorded in manifests and printed; give the credentials through the "
                         "environment (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE) or the machine's role")


def open_location(location: str | Path, what: str = "location") -> tuple[pafs.FileSystem, str]:
    """A local path or any pyarrow filesystem URI -> (filesystem, path inside it); `what` names it
    in the error for a URI with credentials."""
    location = str(location)
    check_location(location, what)
    if is_uri(location):
        return pafs.FileSystem.from_uri(location)
    return pafs.LocalFileSystem(), os.path.abspath(location.removeprefix("file://"))


def cache_root() -> Path:
    """This machine's cache: shard copies, run and model mirrors (`$PARAFORGE_CACHE`)."""
    return Path(os.environ.get("PARAFORGE_CACHE") or Path.home() / ".cache" / "paraforge")


def confined(root: Path, relative: str) -> Path:
    """`root / relative` for a `/`-separated name that came from elsewhere; ValueError when the name
    could reach outside `root` (or is not a plain relative path at all)."""
    parts = relative.split("/")
    if not relative or relative.startswith("/") or "\\" in relative or "\0" in relative \
            or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"refused the name {relative!r} under {root}: an empty, absolute or '..' path "
                         "from a listing or a manifest would reach outside the folder")
    return root.joinpath(*parts)


def cached_shard_name(sha256: str) -> str:
    """A shard's file name in the cache, from its manifest's sha256 (64 hex digits, checked)."""
    if not _SHA256.match(sha256):
        raise ValueError(f"a shard's sha256 must be 64 hex digits, the manifest says {sha256!r}")
    return f"{sha256}.arrow"
