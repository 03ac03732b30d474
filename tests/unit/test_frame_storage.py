"""Frames stored raw, as PNG or as JPEG (ingest.frame_storage): frames_of gives back the (T, H, W, 3) uint8 RGB
array from whatever a videos.parquet row holds, exactly for raw and PNG, within a measured error for JPEG."""
import numpy as np
import pyarrow as pa
import pytest

from pipelines.stages.ingest import store_frames
from rlaif.config import ConfigError, parse_config
from rlaif.frames import decode_frames, encode_frames, sniff_encoding
from rlaif.schemas import VIDEOS, frames_of
from rlaif.testkit.synthetic_videos import make_scene, render_frames


def clip(seed=0, n_frames=8, size=112) -> np.ndarray:
    return render_frames(make_scene(seed, width=size, height=size, n_frames=n_frames))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255 ** 2 / mse)


@pytest.mark.parametrize("encoding", ["raw", "png"])
def test_raw_and_png_give_back_every_pixel(encoding):
    frames = clip()
    frames[0, 0, 0] = (1, 2, 3)  # channel order: R stays R
    data = encode_frames(frames, encoding)
    back = decode_frames(data, frames.shape, encoding)
    assert back.dtype == np.uint8 and back.shape == frames.shape and np.array_equal(back, frames)
    assert tuple(back[0, 0, 0]) == (1, 2, 3)


def test_jpeg_is_smaller_and_close_but_not_exact():
    frames = clip(1)
    data = encode_frames(frames, "jpeg", jpeg_quality=90)
    back = decode_frames(data, frames.shape, "jpeg")
    assert back.shape == frames.shape and back.dtype == np.uint8
    assert len(data) < frames.nbytes / 5  # flat synthetic scenes compress well
    assert not np.array_equal(back, frames) and psnr(back, frames) > 38
    # The colours survive: each frame's mean RGB within 2 levels (a swapped R and B would be far off).
    assert np.abs(back.mean(axis=(1, 2)) - frames.mean(axis=(1, 2))).max() < 2
    assert len(encode_frames(frames, "jpeg", jpeg_quality=30)) < len(data)  # the quality is applied


def test_frames_of_reads_the_encoding_column_or_sniffs_it_when_the_caller_did_not_read_it():
    frames = clip(2)
    for encoding in ("raw", "png", "jpeg"):
        data = encode_frames(frames, encoding)
        row = {"frames": data, "frames_shape": list(frames.shape), "frames_encoding": encoding}
        assert np.array_equal(frames_of(row), decode_frames(data, frames.shape, encoding))
        del row["frames_encoding"]  # e.g. a caller that selected only frames and frames_shape
        assert sniff_encoding(data, frames.shape) == encoding
        assert np.array_equal(frames_of(row), decode_frames(data, frames.shape, encoding))
    row = {"frames": encode_frames(frames, "raw"), "frames_shape": list(frames.shape), "frames_encoding": None}
    assert np.array_equal(frames_of(row), frames)  # null: a row written before the column existed is raw


def test_bad_frame_bytes_are_a_clear_error():
    frames = clip(3)
    with pytest.raises(ValueError, match="neither raw"):
        decode_frames(b"not frames", frames.shape)
    with pytest.raises(ValueError, match="do not decode to"):
        decode_frames(encode_frames(frames, "png"), (4, 56, 56, 3), "png")
    with pytest.raises(ValueError, match="unknown frames encoding"):
        decode_frames(encode_frames(frames, "raw"), frames.shape, "webp")


def test_store_frames_encodes_a_batch_and_says_how():
    videos = [clip(i, n_frames=4, size=56) for i in range(3)]
    batch = pa.Table.from_pylist([{"video_id": f"v{i}", "status": "ok", "frames_shape": list(v.shape),
                                   "frames": v.tobytes()} for i, v in enumerate(videos)], schema=VIDEOS)
    for encoding in ("raw", "png", "jpeg"):
        stored = store_frames(batch, encoding, 90)
        assert stored.schema == VIDEOS and stored.column("frames_encoding").to_pylist() == [encoding] * 3
        rows = stored.to_pylist()
        for row, v in zip(rows, videos):
            back = frames_of(row)
            assert np.array_equal(back, v) if encoding != "jpeg" else psnr(back, v) > 35


def test_config_keeps_raw_by_default_and_refuses_a_jpeg_too_tall():
    cfg = parse_config({})
    assert (cfg.ingest.frame_storage, cfg.ingest.jpeg_quality) == ("raw", 90)
    assert parse_config({"ingest": {"frame_storage": "jpeg", "num_frames": 32, "frame_height": 448}})
    with pytest.raises(ConfigError, match="65500"):
        parse_config({"ingest": {"frame_storage": "jpeg", "num_frames": 512, "frame_height": 448}})
    assert parse_config({"ingest": {"frame_storage": "png", "num_frames": 512, "frame_height": 448}})
    with pytest.raises(ConfigError, match="frame_storage"):
        parse_config({"ingest": {"frame_storage": "webp"}})


def test_png_frames_decode_in_a_process_that_imported_decord_first():
    """OpenCV's PNG decoder fails once decord is loaded (clashing zlibs): rlaif.frames uses Pillow, which does not."""
    import subprocess
    import sys

    code = ("import decord, numpy as np\n"
            "from rlaif.frames import decode_frames, encode_frames\n"
            "f = np.arange(4 * 28 * 28 * 3, dtype=np.uint8).reshape(4, 28, 28, 3)\n"
            "assert np.array_equal(decode_frames(encode_frames(f, 'png'), f.shape), f)\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
