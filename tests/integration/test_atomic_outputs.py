"""A stage killed while writing its Parquet output (a real process death) never leaves something a resume trusts:
the manifest still says "running", so the resumed run redoes the stage, and what the killed writer left is removed
or replaced. On a local disk and on an object store (a local S3 endpoint)."""
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from pipelines.orchestration.resume import Stages
from rlaif.config import RunConfig
from rlaif.manifest import Manifest
from rlaif.storage import RunPath, clean_partials
from tests.integration.die_while_publishing import PARTS, write_parts

pytestmark = pytest.mark.integration


def captions(run_dir: RunPath) -> list[str]:
    final = run_dir / "captions.parquet"
    return sorted(pq.ParquetDataset(final.path, filesystem=final.fs).read().column("caption").to_pylist())


def test_a_writer_killed_mid_output_is_never_trusted(run_root):
    run_dir = run_root
    cfg = RunConfig()
    Stages(cfg, Manifest(run_dir), resume=False).run("captions", ("caption",),
                                                     lambda: write_parts(run_dir / "captions.parquet", "v1"))
    assert captions(run_dir) == ["v1"] * PARTS

    child = subprocess.run([sys.executable, "-m", "tests.integration.die_while_publishing", str(run_dir)],
                           capture_output=True, text=True, timeout=120)
    assert child.returncode == 137, child.stderr[-2000:]
    killed = Manifest(run_dir)
    assert killed.stage("captions")["status"] == "running" and not killed.is_done("captions", cfg.hash("caption"))
    if run_dir.is_local:  # the rename never happened: the old output is intact, the half-written one is staged
        assert captions(run_dir) == ["v1"] * PARTS and run_dir.glob(".captions.parquet.*.partial")
    else:  # the copy into place was cut: a half-written output sits at the final path, but is not trusted
        assert captions(run_dir) == ["v2"]

    resumed = Stages(cfg, Manifest(run_dir), resume=True)
    clean_partials(run_dir)
    resumed.run("captions", ("caption",), lambda: write_parts(run_dir / "captions.parquet", "v2"))
    assert resumed.ran_now == {"captions"}  # redone, not skipped
    assert captions(run_dir) == ["v2"] * PARTS and Manifest(run_dir).is_done("captions", cfg.hash("caption"))
    assert [p.name for p in run_dir.glob("*")] == ["captions.parquet", "manifest.json"]
