"""The pairs stage's reference log-probs do not depend on how many reference actors compute them (pools.reference),
nor on whether videos.parquet stores the frames raw or as PNG (ingest.frame_storage); and ingest stores them as
configured. Real Ray Data, real transformers reference model, on a small hand-made round (no engines)."""
import numpy as np
import pyarrow as pa
import pytest
import ray
from ray.util.state import list_actors

from pipelines.stages.base import StageContext
from pipelines.stages.ingest import decode_spec, run_ingest
from pipelines.stages.io import read_table, write_table
from pipelines.stages.pairs import pairs
from rlaif.config import IngestConfig, parse_config
from rlaif.decode import decode_video
from rlaif.frames import encode_frames
from rlaif.layout import RunLayout
from rlaif.schemas import JUDGMENTS, PROMPTS, VIDEOS, frames_of
from rlaif.testkit.synthetic_videos import make_scene, render_frames, write_synthetic_corpus
from rlaif.testkit.tiny_models import ensure_model

pytestmark = pytest.mark.integration
VIDEO_IDS = ["v0", "v1", "v2"]
PROMPTS_PER_VIDEO = 4  # 12 pairs: two batches of 8, so two reference actors both get one


def write_round(run_dir, encoding: str) -> RunLayout:
    """videos.parquet (frames stored as `encoding`), prompts.parquet and round_0/judgments.parquet with one clear
    preference per question."""
    layout = RunLayout(run_dir)
    videos, prompts, judged = [], [], []
    for i, video_id in enumerate(VIDEO_IDS):
        frames = render_frames(make_scene(i, width=56, height=56, n_frames=4))
        videos.append({"video_id": video_id, "uri": f"{video_id}.mp4", "status": "ok", "duration_s": 2.0,
                       "frames_shape": list(frames.shape), "frames": encode_frames(frames, encoding),
                       "frames_encoding": encoding})
        for q in range(PROMPTS_PER_VIDEO):
            pid = f"{video_id}-q{q}"
            prompts.append({"prompt_id": pid, "video_id": video_id, "question": f"What is shape {q}?",
                            "reference_answer": "a circle", "split": "train", "source": "test"})
            for s, (answer, score) in enumerate([(f"A red circle number {q}.", 5.0), ("zzz qq", 1.0)]):
                judged.append({"prompt_id": pid, "sample_idx": s, "model": "m", "response": answer, "n_tokens": 5,
                               "finish_reason": "stop", "round": 0, "score": score, "raw_score": score,
                               "parse_ok": True, "attempts": 1, "judge_model": "j", "status": "scored"})
    write_table(pa.Table.from_pylist(videos, schema=VIDEOS), layout.videos)
    write_table(pa.Table.from_pylist(prompts, schema=PROMPTS), layout.prompts)
    write_table(pa.Table.from_pylist(judged, schema=JUDGMENTS), layout.round(0).judgments)
    return layout


def reference_actors_started() -> int:
    """Reference actors this Ray has started, alive or done (other Ray instances may run on the machine)."""
    address = ray.get_runtime_context().gcs_address
    return sum("ReferenceLogps" in a.class_name for a in list_actors(address=address, limit=10_000))


def run_pairs(tmp_path, name: str, encoding: str, actors: int) -> list[dict]:
    layout = write_round(tmp_path / name, encoding)
    cfg = parse_config({"pools": {"reference": {"actors": actors}}})
    before = reference_actors_started()
    counts = pairs(StageContext(cfg, layout, round=0, reference=ensure_model("tiny-qwen2-vl")))
    assert reference_actors_started() - before == actors  # the pool had the size asked for
    assert counts["rows"] == len(VIDEO_IDS) * PROMPTS_PER_VIDEO
    return sorted(read_table(layout.round(0).pairs).to_pylist(), key=lambda r: r["prompt_id"])


def test_two_reference_actors_and_png_frames_give_the_same_pairs_as_one_actor_and_raw_frames(ray_local, tmp_path):
    one = run_pairs(tmp_path, "raw-1", "raw", 1)
    assert all(np.isfinite(r["ref_logp_chosen"]) and r["ref_logp_chosen"] != r["ref_logp_rejected"] for r in one)
    assert len({r["ref_logp_chosen"] for r in one}) > len(VIDEO_IDS)  # answers differ: so do their log-probs
    assert run_pairs(tmp_path, "raw-2", "raw", 2) == one  # every column, float for float
    assert run_pairs(tmp_path, "png-2", "png", 2) == one  # PNG is lossless: the reference saw the same pixels


def test_ingest_stores_frames_as_configured(ray_local, tmp_path):
    clips = [str(v.path) for v in write_synthetic_corpus(tmp_path / "clips", 2, seed=5)]
    for storage in ("png", "jpeg"):
        cfg = IngestConfig(frame_storage=storage, num_frames=4, frame_height=56, frame_width=56)
        result = run_ingest(cfg, tmp_path / storage, clips)
        rows = read_table(result.videos_path).to_pylist()
        assert result.n_ok == 2 and [r["frames_encoding"] for r in rows] == [storage] * 2
        for row in rows:
            decoded = decode_video(row["uri"], decode_spec(cfg)).frames
            frames = frames_of(row)
            assert frames.shape == decoded.shape and len(row["frames"]) < decoded.nbytes
            error = np.abs(frames.astype(int) - decoded).max()
            assert error == 0 if storage == "png" else 0 < error <= 64, (storage, error)
