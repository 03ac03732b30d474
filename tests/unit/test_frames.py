import pytest

from rlaif.frames import fps_indices, sample_indices, uniform_indices


def test_uniform_spans_first_to_last():
    assert uniform_indices(100, 5) == [0, 25, 50, 74, 99]
    assert uniform_indices(8, 8) == list(range(8))


def test_uniform_short_clip_repeats_frames():
    idx = uniform_indices(3, 8)
    assert len(idx) == 8 and idx[0] == 0 and idx[-1] == 2 and idx == sorted(idx)


def test_uniform_single_frame_takes_middle():
    assert uniform_indices(9, 1) == [4]


@pytest.mark.parametrize("n", [0, -1])
def test_no_frames_is_an_error(n):
    with pytest.raises(ValueError, match="no frames"):
        uniform_indices(n, 4)


def test_fps_sampling_keeps_rate():
    # 10 s at 30 fps sampled at 2 fps -> 20 frames, every 15th
    idx = fps_indices(300, 30.0, 2.0, max_frames=64)
    assert len(idx) == 20 and idx[:3] == [0, 15, 30]


def test_fps_sampling_caps_and_falls_back_to_uniform():
    assert len(fps_indices(3000, 30.0, 2.0, max_frames=16)) == 16
    assert fps_indices(10, float("nan"), 2.0, max_frames=4) == uniform_indices(10, 4)
    assert fps_indices(10, 0.0, 2.0, max_frames=4) == uniform_indices(10, 4)


def test_fps_sampling_gives_at_least_one_frame():
    assert fps_indices(5, 30.0, 1.0, max_frames=8) == [0]


def test_unknown_mode():
    with pytest.raises(ValueError, match="unknown sampling mode"):
        sample_indices(10, 30.0, mode="random", num_frames=4, sample_fps=1.0)
