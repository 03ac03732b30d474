"""Shared test setup: no model hub, and a fresh model cache per session so every test run proves the build paths
(RLAIF_TEST_KEEP_CACHE=1 keeps using the user's cache instead, for quick local iterations)."""
import os
import shutil
import tempfile

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
_SESSION_CACHE = None
if "RLAIF_TEST_KEEP_CACHE" not in os.environ:
    _SESSION_CACHE = tempfile.mkdtemp(prefix="rlaif-test-cache-")
    os.environ["RLAIF_CACHE"] = _SESSION_CACHE


def pytest_sessionfinish(session, exitstatus):
    if _SESSION_CACHE:  # the converted SmolLM2 alone is ~0.5 GB
        shutil.rmtree(_SESSION_CACHE, ignore_errors=True)


@pytest.fixture(scope="session")
def s3_bucket():
    """A local S3 endpoint (tests/s3_server.py) and a bucket on it, for the whole session."""
    from tests.s3_server import s3_server

    with s3_server() as uri:
        yield uri


@pytest.fixture(params=["local", "s3"])
def run_root(request, tmp_path):
    """An empty run folder on each kind of storage: the local disk and the S3 endpoint."""
    import uuid

    from rlaif.storage import RunPath

    if request.param == "local":
        return RunPath.of(tmp_path / "run")
    return RunPath.of(f"{request.getfixturevalue('s3_bucket')}/{uuid.uuid4().hex}")
