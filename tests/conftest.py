"""Shared test setup: no model hub, and a fresh model cache per session so every test run proves the build paths."""
import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if "RLAIF_TEST_KEEP_CACHE" not in os.environ:
    os.environ["RLAIF_CACHE"] = tempfile.mkdtemp(prefix="rlaif-test-cache-")
