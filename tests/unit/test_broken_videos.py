"""The broken-input corpus: many distinct failures, all verified in child processes, deterministic; and beside it
the decodable group, files that decode but are wrong, each with what ingest must do with it.

Never decode a corpus file in this process: some of them crash decord (that is the point of the corpus).
"""
from __future__ import annotations

import collections
import errno
import json
import os
import signal
import struct

import pytest

pytest.importorskip("decord")
pytest.importorskip("av")

from rlaif.testkit import broken_videos as bv  # noqa: E402
from rlaif.testkit.synthetic_videos import write_synthetic_corpus  # noqa: E402


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    return write_synthetic_corpus(tmp_path_factory.mktemp("good"), 1, seed=0)[0].path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, good):
    d = tmp_path_factory.mktemp("broken")
    return d, bv.write_broken_corpus(d, good, seed=0)


def test_good_clip_decodes_in_child(good):
    for source in ("path", "bytes"):
        (r,) = bv.probe_decode([good], source=source)
        assert r["status"] == "decoded" and r["n_frames"] == 16, r


def test_size_and_variety(corpus):
    _, cases = corpus
    kinds = collections.Counter(c.kind for c in cases)
    assert len(cases) >= 50
    assert len(kinds) >= 10, kinds
    assert set(kinds) <= set(bv.BROKEN_KINDS)
    assert "glitched-but-decodable" not in kinds
    assert len({c.name for c in cases}) == len(cases)
    for must in ("empty", "random-bytes", "truncated", "header-zeroed", "atom-removed", "bit-flip", "not-a-video",
                 "wrong-container", "zero-frames", "huge-dimensions", "directory", "dangling-symlink", "nonexistent",
                 "decoder-crash"):
        assert kinds[must] >= 1, must


def test_every_case_fails_in_a_child_process(corpus):
    _, cases = corpus
    # Independent re-check of what write_broken_corpus verified: nothing in the corpus decodes from its path.
    results = bv.probe_decode([c.path for c in cases], source="path")
    decoded = [c.name for c, r in zip(cases, results) if bv.decodes_ok(r)]
    assert not decoded
    for c, r in zip(cases, results):
        assert r["status"] in {"error", "zero-frames", "bad-shape", "crash", "timeout"}
        assert c.outcome["path"]["status"] == r["status"], (c.name, c.outcome["path"], r)


def test_filesystem_cases(corpus):
    d, cases = corpus
    by_kind = {c.kind: c for c in cases}
    assert not os.path.lexists(by_kind["nonexistent"].path)
    assert by_kind["directory"].path.is_dir() and by_kind["directory"].path.name.endswith(".mp4")
    dangling = by_kind["dangling-symlink"].path
    assert dangling.is_symlink() and not dangling.exists()
    loop = by_kind["symlink-loop"].path
    assert loop.is_symlink()
    with pytest.raises(OSError) as err:
        os.stat(loop)
    assert err.value.errno == errno.ELOOP


def test_permission_case_is_honest(corpus, good, tmp_path):
    d, cases = corpus
    manifest = json.loads((d / "manifest.json").read_text())
    perm = [c for c in manifest["cases"] + manifest["excluded"] if c["kind"] == "permission-denied"]
    assert len(perm) == 1
    if os.geteuid() == 0:                  # root reads mode-000 files: decodes, so it is excluded and says why
        assert perm[0] in manifest["excluded"] and "root" in perm[0]["description"]
    else:
        assert perm[0] in manifest["cases"]


def test_manifest_and_exclusions(corpus):
    d, cases = corpus
    manifest = json.loads((d / "manifest.json").read_text())
    assert [c["name"] for c in manifest["cases"]] == [c.name for c in cases]
    for c in manifest["excluded"]:                      # only a readable mode-000 file, as root
        assert c["kind"] == "permission-denied"
        assert c["outcome"]["path"]["status"] == "decoded"
        assert not os.path.lexists(c["path"])          # a decodable file must not sit in the broken folder
    # Mutations that still decode are no longer thrown away: they are in the decodable group, in decodable/.
    glitched = [c for c in bv.decodable_cases(d) if c.kind == "glitched-but-decodable"]
    assert glitched and not any(os.path.lexists(d / c.path.name) for c in glitched)
    for c in glitched:
        assert c.path.parent == d / "decodable" and c.path.is_file()
        assert c.outcome["path"]["status"] == "decoded" and c.expect == ""


def test_decodable_group(corpus):
    d, _ = corpus
    group = bv.decodable_cases(d)
    kinds = collections.Counter(c.kind for c in group)
    assert set(kinds) == set(bv.DECODABLE_KINDS), kinds
    assert all(kinds[k] >= 2 for k in ("short-stream", "blank", "resolution-change", "timestamp-restart",
                                       "huge-declared-size")), kinds
    assert len({c.name for c in group}) == len(group)
    expect = {"short-stream": "keep:short_stream", "blank": "quarantine:blank_video",
              "resolution-change": "keep:resolution_change", "huge-declared-size": "quarantine:implausible_size",
              "timestamp-restart": "keep:timestamp_jump"}
    for c in group:
        assert c.path.parent == d / "decodable" and c.path.is_file(), c.name
        if c.kind in expect:
            assert c.expect.startswith(expect[c.kind]), c.name
        if c.kind == "huge-declared-size":           # a decompression bomb: never handed to decord, not even here
            assert c.outcome["path"]["status"] == "not-probed"
        else:                                         # wrong, but decord decodes every one of them
            assert c.outcome["path"]["status"] == "decoded", (c.name, c.outcome)


def test_decodable_kinds_are_what_they_say(corpus, good):
    d, _ = corpus
    by_name = {c.name: c for c in bv.decodable_cases(d)}
    n_good = 16
    # Frames cut short: decord finds fewer frames than the 16 the clip has (and the Matroska header declares).
    for name in ("short-mkv-60pct", "short-mkv-85pct"):
        assert 0 < by_name[name].outcome["path"]["n_frames"] < n_good, by_name[name].outcome
    short = [by_name[f"short-mkv-{pct}pct"].outcome["path"]["n_frames"] for pct in (60, 85)]
    assert short[0] < short[1]
    # Huge declared size, tiny payload: the header really claims it, the file is the good clip's size.
    for side in (4096, 8000):
        data = by_name[f"declares-{side}x{side}"].path.read_bytes()
        assert bv.sps_size(bv.avcc_sps(data)) == (side, side)
        assert abs(len(data) - good.stat().st_size) < 64
    # Resolution change: two MPEG-TS segments, each with its own SPS of a different size.
    data = by_name["resolution-shrinks"].path.read_bytes()
    assert data[0] == 0x47 and data[188] == 0x47      # MPEG-TS packets
    sizes = set()
    for at in [i for i in range(len(data) - 4) if data[i:i + 4] == b"\x00\x00\x01\x67"]:  # SPS NAL (type 7)
        sizes.add(bv.sps_size(data[at + 3:at + 40]))
    assert len(sizes) >= 2, sizes


def test_decodable_group_is_deterministic(corpus, good, tmp_path):
    d, _ = corpus
    again = {c.name: c for c in bv.write_decodable_corpus(tmp_path, good, verify=False)}
    for c in bv.decodable_cases(d):
        if c.kind != "glitched-but-decodable":
            assert again[c.name].path.read_bytes() == c.path.read_bytes(), c.name


def test_deterministic_for_a_seed(corpus, good, tmp_path):
    d, cases = corpus
    again = bv.write_broken_corpus(tmp_path, good, seed=0)
    assert [(c.name, c.kind) for c in again] == [(c.name, c.kind) for c in cases]
    for a, b in zip(cases, again):
        if a.path.is_file() and not a.path.is_symlink() and a.kind != "permission-denied":
            assert a.path.read_bytes() == b.path.read_bytes(), a.name
    other = {c.name: c for c in bv.write_broken_corpus(tmp_path / "s1", good, seed=1, verify=False)}
    mine = next(c for c in cases if c.name == "random-4096b")
    assert other["random-4096b"].path.read_bytes() != mine.path.read_bytes()


def test_huge_dimension_header_really_claims_60000(corpus):
    _, cases = corpus
    c = next(c for c in cases if c.name == "huge-60000-all")
    data = c.path.read_bytes()
    assert bv.sps_size(bv.avcc_sps(data)) == (60000, 60000)
    tkhd = bv._find(data, ["moov", "trak", "tkhd"])[-1]
    assert struct.unpack(">II", data[tkhd[1] + tkhd[2] - 8:tkhd[1] + tkhd[2]]) == (60000 << 16, 60000 << 16)


def test_decoder_crash_recipes_crash(corpus):
    _, cases = corpus
    crash = {c.name: c for c in cases if c.kind == "decoder-crash"}
    assert set(crash) == {"crash-bytesio-co64-2p62", "crash-stts-nb-frames-2p35"}
    bio = crash["crash-bytesio-co64-2p62"]
    assert bio.outcome["bytes"]["status"] == "crash" and bio.outcome["bytes"]["signal"] == signal.SIGSEGV
    assert bio.outcome["path"]["status"] == "error"            # from a path, ffmpeg's own I/O fails cleanly
    stts = crash["crash-stts-nb-frames-2p35"]
    assert stts.outcome["path"]["status"] == "crash" and stts.outcome["path"]["signal"] == signal.SIGABRT


def test_probe_survives_a_hang(tmp_path):
    fifo = tmp_path / "blocking.mp4"
    os.mkfifo(fifo)                                    # open() blocks forever without a writer
    good_after = tmp_path / "missing.mp4"
    res = bv.probe_decode([fifo, good_after], timeout_s=1)
    assert res[0]["status"] == "timeout" and res[0]["signal"] == signal.SIGALRM
    assert res[1]["status"] == "error"                 # the probe went on with the next file


def test_layout_helpers_keep_a_clip_decodable(good, tmp_path):
    # faststart (moov first) and back: the helpers behind the truncation cases must not break a good clip by themselves.
    fast = bv._faststart(good.read_bytes())
    back = bv._moov_last(fast)
    assert fast[:4] == good.read_bytes()[:4] and back == good.read_bytes()
    (tmp_path / "fast.mp4").write_bytes(fast)
    (r,) = bv.probe_decode([tmp_path / "fast.mp4"])
    assert r["status"] == "decoded" and r["n_frames"] == 16


def test_rejects_non_mp4_good_clip(tmp_path):
    p = tmp_path / "x.mp4"
    p.write_bytes(b"not an mp4 at all")
    with pytest.raises(ValueError):
        bv.write_broken_corpus(tmp_path / "out", p)
