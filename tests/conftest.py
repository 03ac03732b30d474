"""Shared test setup: no model hub, and a fresh model cache per session so every test run proves the build paths
(RLAIF_TEST_KEEP_CACHE=1 keeps using the user's cache instead, for quick local iterations)."""
import os
import shutil
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
_SESSION_CACHE = None
if "RLAIF_TEST_KEEP_CACHE" not in os.environ:
    _SESSION_CACHE = tempfile.mkdtemp(prefix="rlaif-test-cache-")
    os.environ["RLAIF_CACHE"] = _SESSION_CACHE


def pytest_sessionfinish(session, exitstatus):
    if _SESSION_CACHE:  # the converted SmolLM2 alone is ~0.5 GB
        shutil.rmtree(_SESSION_CACHE, ignore_errors=True)
