"""Run folders and model folders on a local disk or an object store (s3://, gs://, ...), through pyarrow filesystems.

`RunPath` is the small part of `pathlib.Path` the pipeline needs (`/`, name, exists, glob, read/write text), for
both kinds of location; `str(p)` is what Ray Data, Ray Train and pyarrow take (a local path or a URI).

Publishing differs: on a local disk an output is renamed into place (atomic); an object store has no rename, so
the staged files are copied over a deleted target. That is not atomic, which is why the commit point of every
stage is its "done" record in manifest.json (one PUT, atomic on object stores): a resumed run redoes any stage
not recorded as done, whatever files it left. Model folders are loaded from a local copy (`local_copy`), keyed by
the remote listing so a rewritten folder is fetched again.
"""
from __future__ import annotations

import fnmatch
import functools
import hashlib
import json
import os
import posixpath
import shutil
import tempfile
import uuid
from pathlib import Path, PurePosixPath
from typing import Any

import pyarrow.fs as pafs


def is_remote(where: str | os.PathLike) -> bool:
    s = str(where)
    return "://" in s and not s.startswith("file://")


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a URI. pyarrow serves s3, gs, hdfs natively (s3 honours AWS_ENDPOINT_URL);
    other schemes (http, ...) go through fsspec when it has them. One filesystem per bucket is kept: making one
    asks the store for the bucket's region."""
    scheme, rest = uri.split("://", 1)
    bucket = rest.split("/", 1)[0]
    fs = _bucket_filesystem(scheme, bucket, os.environ.get("AWS_ENDPOINT_URL", ""))
    if isinstance(fs, pafs.PyFileSystem):
        return fs, fs.handler.fs._strip_protocol(uri)
    if scheme in BUCKET_SCHEMES:
        return fs, rest.rstrip("/")  # "bucket/key", what pyarrow's object-store filesystems take
    return fs, pafs.FileSystem.from_uri(uri)[1]


BUCKET_SCHEMES = ("s3", "gs", "gcs")


@functools.lru_cache(maxsize=64)
def _bucket_filesystem(scheme: str, bucket: str, endpoint: str) -> pafs.FileSystem:  # endpoint: part of the key
    uri = f"{scheme}://{bucket}"
    try:
        return pafs.FileSystem.from_uri(uri)[0]
    except (ValueError, NotImplementedError):  # pyarrow's ArrowInvalid is a ValueError: no native filesystem
        import fsspec

        return pafs.PyFileSystem(pafs.FSSpecHandler(fsspec.filesystem(scheme)))


class RunPath:
    """A folder or file in a run folder, local or remote. Immutable; `/` joins."""

    __slots__ = ("fs", "path", "scheme")

    def __init__(self, fs: pafs.FileSystem, path: str, scheme: str = ""):
        self.fs, self.path, self.scheme = fs, path.rstrip("/") or "/", scheme

    @classmethod
    def of(cls, where: str | os.PathLike | RunPath) -> RunPath:
        if isinstance(where, RunPath):
            return where
        s = os.fspath(where)
        if is_remote(s):
            fs, path = filesystem(s)
            return cls(fs, path, s.split("://", 1)[0])
        s = s[len("file://"):] if s.startswith("file://") else s
        return cls(pafs.LocalFileSystem(), os.path.abspath(s))

    # --- naming -------------------------------------------------------------------------------------------------
    @property
    def is_local(self) -> bool:
        return not self.scheme

    @property
    def local(self) -> Path:
        if not self.is_local:
            raise ValueError(f"{self} is not on the local disk")
        return Path(self.path)

    def __str__(self) -> str:
        return self.path if self.is_local else f"{self.scheme}://{self.path}"

    def __repr__(self) -> str:
        return f"RunPath({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RunPath) and str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))

    def __truediv__(self, part: str) -> RunPath:
        return RunPath(self.fs, posixpath.join(self.path, str(part)), self.scheme)

    @property
    def name(self) -> str:
        return posixpath.basename(self.path)

    @property
    def parent(self) -> RunPath:
        return RunPath(self.fs, posixpath.dirname(self.path), self.scheme)

    def with_name(self, name: str) -> RunPath:
        return self.parent / name

    def relative_to(self, other: RunPath) -> PurePosixPath:
        return PurePosixPath(self.path).relative_to(other.path)

    # --- queries ------------------------------------------------------------------------------------------------
    def _type(self) -> pafs.FileType:
        return self.fs.get_file_info(self.path).type

    def exists(self) -> bool:
        return self._type() != pafs.FileType.NotFound

    def is_dir(self) -> bool:
        return self._type() == pafs.FileType.Directory

    def _walk(self) -> list[pafs.FileInfo]:
        if not self.is_dir():
            return []
        return self.fs.get_file_info(pafs.FileSelector(self.path, recursive=True))

    def glob(self, pattern: str) -> list[RunPath]:
        """Entries whose path relative to this folder matches `pattern` (fnmatch, `/` separated), sorted."""
        depth = pattern.count("/")
        out = []
        for info in self._walk():
            rel = posixpath.relpath(info.path, self.path)
            if rel.count("/") == depth and fnmatch.fnmatchcase(rel, pattern):
                out.append(RunPath(self.fs, info.path, self.scheme))
        return sorted(out, key=str)

    def rglob(self, name_pattern: str) -> list[RunPath]:
        """Entries at any depth whose own name matches; an entry inside a matching folder is not listed again."""
        hits = sorted((i.path for i in self._walk() if fnmatch.fnmatchcase(posixpath.basename(i.path), name_pattern)))
        top = [p for p in hits if not any(p.startswith(q + "/") for q in hits)]
        return [RunPath(self.fs, p, self.scheme) for p in top]

    # --- reading and writing ------------------------------------------------------------------------------------
    def read_bytes(self) -> bytes:
        with self.fs.open_input_stream(self.path) as f:
            return f.read()

    def read_text(self) -> str:
        return self.read_bytes().decode()

    def write_bytes(self, data: bytes) -> None:
        """Atomic on both kinds: a local temp file renamed into place, or one object PUT."""
        if self.is_local:
            self.parent.mkdir()
            tmp = self.local.with_name(f".{self.name}.{uuid.uuid4().hex}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, self.local)
            return
        with self.fs.open_output_stream(self.path) as f:
            f.write(data)

    def write_text(self, text: str) -> None:
        self.write_bytes(text.encode())

    def copy_from(self, local: str | os.PathLike) -> None:
        """The local file `local` copied here a chunk at a time (a log can be large; the caller's memory does not
        grow with it), atomic like `write_bytes`."""
        if self.is_local:
            self.parent.mkdir()
            tmp = self.local.with_name(f".{self.name}.{uuid.uuid4().hex}.tmp")
            shutil.copyfile(local, tmp)
            os.replace(tmp, self.local)
            return
        with open(local, "rb") as src, self.fs.open_output_stream(self.path) as dst:
            shutil.copyfileobj(src, dst, 1 << 20)

    def read_json(self) -> Any:
        return json.loads(self.read_text())

    def write_json(self, data: Any) -> None:
        self.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))

    def mkdir(self) -> None:
        """Make this folder and its parents (object stores have no folders: nothing to do there)."""
        if self.is_local:
            self.local.mkdir(parents=True, exist_ok=True)

    def remove(self) -> None:
        """Delete this file or folder tree if it exists."""
        kind = self._type()
        if kind == pafs.FileType.Directory:
            self.fs.delete_dir(self.path)
        elif kind != pafs.FileType.NotFound:
            self.fs.delete_file(self.path)


def staging_path(final: RunPath) -> RunPath:
    """A unique hidden sibling of `final` to write into before `publish`."""
    return final.with_name(f".{final.name}.{uuid.uuid4().hex}.partial")


def publish(staged: RunPath, final: RunPath) -> None:
    """Move a completed output into place, replacing an older one. Local: the old one is renamed aside, the new one
    renamed in (atomic). Object store: the old one is deleted and the staged files copied over (the manifest's
    "done" record, written after this, is what a resume trusts)."""
    if final.is_local:
        if final.exists():
            old = final.with_name(f".{final.name}.{uuid.uuid4().hex}.old")
            os.replace(final.local, old.local)
            os.replace(staged.local, final.local)
            old.remove()
        else:
            os.replace(staged.local, final.local)
        return
    final.remove()
    if staged.is_dir():
        pafs.copy_files(staged.path, final.path, source_filesystem=staged.fs, destination_filesystem=final.fs)
    else:
        final.fs.copy_file(staged.path, final.path)
    staged.remove()


def local_staging(final: RunPath) -> Path:
    """A new empty local folder to write a folder (e.g. a saved model) into before `publish_folder(it, final)`: the
    staging sibling itself when `final` is local, a temporary folder when it is remote."""
    if final.is_local:
        staged = staging_path(final).local
        staged.mkdir(parents=True)
        return staged
    return Path(tempfile.mkdtemp(prefix=f".{final.name}."))


def publish_folder(staged: Path, final: RunPath) -> None:
    """Put a folder made by `local_staging(final)` at `final`, replacing what was there; `staged` is used up."""
    if final.is_local:
        publish(RunPath.of(staged), final)
        return
    final.remove()
    try:
        pafs.copy_files(str(staged), final.path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=final.fs)
    finally:
        shutil.rmtree(staged, ignore_errors=True)


def clean_partials(run_dir: RunPath) -> int:
    """Remove leftovers of stages killed while writing. Returns how many were removed."""
    stale = run_dir.rglob(".*.partial")
    for p in stale:
        p.remove()
    return len(stale)


def local_copy(uri: str, cache: Path) -> str:
    """A local folder holding the remote folder `uri` (a model, an adapter), downloaded once into `cache`.

    The cache key hashes the remote listing (paths, sizes, mtimes), so a folder rewritten by a later run is fetched
    again. The download goes to a temporary sibling renamed into place, so a present copy is always complete."""
    src = RunPath.of(uri)
    listing = sorted((i.path, i.size, str(i.mtime)) for i in src._walk() if i.type == pafs.FileType.File)
    if not listing:
        raise FileNotFoundError(f"{uri}: no such folder, or it is empty")
    key = hashlib.sha256(json.dumps([str(src), listing]).encode()).hexdigest()[:20]
    final = cache / f"{src.name}-{key}"
    if final.is_dir():
        return str(final)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=cache))
    try:
        pafs.copy_files(src.path, str(tmp), source_filesystem=src.fs, destination_filesystem=pafs.LocalFileSystem())
        os.rename(tmp, final)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not final.is_dir():  # a concurrent download that won the rename is as good as ours
            raise
    return str(final)


def local_folder(where: str) -> str:
    """`where` itself when it is local (a path, or a hub id), else a cached local copy of the remote folder."""
    if not is_remote(where):
        return where
    from rlaif.paths import cache_dir

    return local_copy(where, cache_dir() / "remote")
