"""Child process of test_atomic_outputs: runs stage "captions" of a run folder (URI in argv[1]) and dies with
os._exit(137) half-way through writing its output: before the publish on a local disk (where publishing is a
rename), half-way through the copy into place on an object store (where it is not)."""
import os
import sys

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipelines.orchestration.resume import Stages
from rlaif.config import RunConfig
from rlaif.manifest import Manifest
from rlaif.storage import RunPath, publish, staging_path

PARTS = 3


def write_parts(final: RunPath, version: str, die_after: int | None = None) -> int:
    staged = staging_path(final)
    staged.mkdir()
    for i in range(PARTS):
        if die_after is not None and i == die_after:
            os._exit(137)
        pq.write_table(pa.table({"video_id": [f"v{i}"], "caption": [version]}), (staged / f"part-{i}.parquet").path,
                       filesystem=staged.fs)
    publish(staged, final)
    return PARTS


def die_in_copy(src, dst, source_filesystem, destination_filesystem, **_):
    first = sorted(i.path for i in source_filesystem.get_file_info(pafs.FileSelector(src)))[0]
    with source_filesystem.open_input_stream(first) as f, \
            destination_filesystem.open_output_stream(dst + "/" + first.rsplit("/", 1)[1]) as out:
        out.write(f.read())
    os._exit(137)


if __name__ == "__main__":
    run_dir = RunPath.of(sys.argv[1])
    stages = Stages(RunConfig(), Manifest(run_dir), resume=False)
    if run_dir.is_local:
        stages.run("captions", ("caption",), lambda: write_parts(run_dir / "captions.parquet", "v2", die_after=2))
    else:
        pafs.copy_files = die_in_copy  # publish's copy into place dies half-way (this process only)
        stages.run("captions", ("caption",), lambda: write_parts(run_dir / "captions.parquet", "v2"))
