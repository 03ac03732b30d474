"""Turn an ingest `source` (folder, glob, Parquet manifest, list) into a sorted list of video URIs with stable ids."""
from __future__ import annotations

import fnmatch
import glob
import hashlib
import os
import re
from pathlib import Path

import pyarrow as pa

MANIFEST_COLUMNS = ("uri", "path", "video")  # the first one present names the videos in a Parquet manifest
ID_CHUNK = 65536  # video ids made at a time by input_table


def video_id_for(uri: str, root: str = "") -> str:
    """Readable and stable: the file stem plus a hash of the URI's path below `root` (two `clip.mp4` in different
    folders differ). Hashing the path below the inputs' common folder, not the absolute one, gives the same ids (and
    so the same split and sampling seeds) to the same inputs wherever they are copied."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(uri.rstrip("/")).stem)[:48] or "video"
    below = uri[len(root):].lstrip("/") if root and uri.startswith(root) else uri
    return f"{stem}-{hashlib.sha1(below.encode()).hexdigest()[:8]}"


def common_folder(uris: list[str]) -> str:
    """The deepest folder holding every URI ("/data/clips" for /data/clips/a.mp4 and /data/clips/b/c.mp4;
    "s3://bucket/x" likewise; "" when they share none, e.g. a local path and an object-store one)."""
    # commonprefix compares any sequences item by item: here each URI's folder names, one URI at a time (a list of
    # every URI's names held ~400 bytes a URI at once in the driver).
    shared: list[str] | None = None
    for uri in uris:
        folders = uri.rstrip("/").split("/")[:-1]
        shared = folders if shared is None else os.path.commonprefix([shared, folders])
    return "/".join(shared or [])


def video_ids(uris: list[str]) -> list[str]:
    """The ids of a whole input list, each hashed below the inputs' common folder (see `video_id_for`)."""
    root = common_folder(uris)
    return [video_id_for(u, root) for u in uris]


def input_table(uris: list[str], limit: int | None = None) -> pa.Table:
    """The inputs as (video_id, uri) rows, the first `limit` of them (all when None). Arrow strings, not Python
    rows: a million inputs are ~70 MiB here instead of ~280 MiB of dicts, and Ray Data takes the table's slices
    into the object store as they are. Ids are hashed below the whole list's common folder, so a video keeps its id
    (and split) whatever `limit` is."""
    kept = uris if limit is None else uris[:limit]
    root = common_folder(uris)
    # Made ID_CHUNK ids at a time: a Python list of every id held ~80 bytes a video at once in the driver.
    ids = [pa.array([video_id_for(u, root) for u in kept[i:i + ID_CHUNK]], pa.string())
           for i in range(0, len(kept), ID_CHUNK)]
    return pa.table({"video_id": pa.chunked_array(ids, pa.string()), "uri": pa.array(kept, pa.string())})


def _list_dir(folder: str, extensions: list[str] | None) -> list[str]:
    exts = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions) if extensions else None
    out = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        # A directory whose name looks like a video is listed as an input so that it is quarantined, not skipped.
        names = [f for f in files if not f.startswith(".")] + [d for d in dirs if exts and d.lower().endswith(exts)]
        for name in names:
            if exts is None or name.lower().endswith(exts):
                out.append(os.path.join(root, name))
    return out


def read_manifest(path: str) -> list[str]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    for col in MANIFEST_COLUMNS:
        if col in table.column_names:
            return [str(u) for u in table.column(col).to_pylist() if u is not None]
    raise ValueError(f"manifest {path} has none of the columns {MANIFEST_COLUMNS}; it has {table.column_names}")


def list_video_uris(source: str | list[str], extensions: list[str] | None = None) -> list[str]:
    """Every input named by `source`, sorted and de-duplicated. Paths that do not exist are kept (they are
    quarantined as missing), except a glob or folder that matches nothing, which is an error."""
    if isinstance(source, (list, tuple)):
        uris = [str(s) for s in source]
    elif "://" in source and not source.startswith("file://"):
        uris = _list_remote(source, extensions)
    elif source.endswith(".parquet") and os.path.isfile(source):
        uris = read_manifest(source)
    elif os.path.isdir(source):
        uris = _list_dir(source, extensions)
        if not uris:
            raise ValueError(f"folder {source} holds no files" + (f" with suffixes {extensions}" if extensions else ""))
    elif glob.has_magic(source):
        uris = sorted(glob.glob(source, recursive=True))
        if not uris:
            raise ValueError(f"glob {source!r} matches nothing")
    elif os.path.exists(source):
        uris = [source]
    else:
        raise ValueError(f"ingest source {source!r} is not a folder, glob, Parquet manifest or existing file")
    return sorted(dict.fromkeys(os.path.abspath(u) if "://" not in u else u for u in uris))


def _list_remote(source: str, extensions: list[str] | None) -> list[str]:
    """Files under an object-store prefix (or the one object named), through pyarrow filesystems."""
    import pyarrow.fs as pafs

    from rlaif.storage import filesystem

    if source.endswith(".parquet"):
        return read_manifest(source)
    fs, path = filesystem(source)
    scheme = source.split("://", 1)[0]

    def files_under(prefix: str) -> list[str]:
        return [i.path for i in fs.get_file_info(pafs.FileSelector(prefix, recursive=True))
                if i.type == pafs.FileType.File and not i.base_name.startswith(".")]

    if glob.has_magic(path):  # s3://bucket/clips/*.mp4: list the fixed part, match the rest
        fixed = path[:min(path.find(c) for c in "*?[" if c in path)].rsplit("/", 1)[0]
        found = [f for f in files_under(fixed) if fnmatch.fnmatchcase(f, path)]
        if not found:
            raise ValueError(f"glob {source!r} matches nothing")
    elif (info := fs.get_file_info(path)).type == pafs.FileType.Directory:
        found = files_under(path)
    elif info.type == pafs.FileType.File:
        found = [path]
    else:
        raise ValueError(f"ingest source {source!r} does not exist")
    if extensions:
        exts = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
        found = [f for f in found if f.lower().endswith(exts)]
    return [f"{scheme}://{f}" for f in found]
