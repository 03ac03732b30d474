"""The pairs stage's reference log-probs depend on the pair alone, not on which pairs share its Ray Data batch (that
differs from run to run), so the same judged answers give the same pairs.parquet bit for bit, and the same round."""
import numpy as np
import pyarrow as pa
import pytest
import torch

from pipelines.stages.pairs import ReferenceLogps
from rlaif.testkit.tiny_models import ensure_model

WORDS = "the red ball moves left and a blue square turns dark then stops in the corner of the video".split()


def pair_rows(n: int) -> pa.Table:
    """n pairs over random clips, answers of different lengths (so a batch of pairs is padded)."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        frames = rng.integers(0, 256, (4, 56, 56, 3), dtype=np.uint8)
        rows.append({"prompt_id": f"p{i}", "video_id": f"v{i}", "question": "What happens in the video?",
                     "chosen": " ".join(rng.choice(WORDS, 3 + i)), "rejected": " ".join(rng.choice(WORDS, 12 - i)),
                     "score_chosen": 5.0, "score_rejected": 1.0, "chosen_tokens": 3 + i, "rejected_tokens": 12 - i,
                     "frames": frames.tobytes(), "frames_shape": list(frames.shape), "frames_encoding": "raw"})
    return pa.Table.from_pylist(rows)


def scored(scorer: ReferenceLogps, table: pa.Table, cuts: list[int]) -> list[tuple[float, float]]:
    """The log-probs of `table`'s pairs, given to `scorer` as the batches that `cuts` (offsets) make."""
    edges = [0, *cuts, len(table)]
    parts = [scorer(table.slice(a, b - a)) for a, b in zip(edges, edges[1:])]
    out = pa.concat_tables(parts)
    return list(zip(out.column("ref_logp_chosen").to_pylist(), out.column("ref_logp_rejected").to_pylist()))


@pytest.fixture(scope="module")
def policy_path():
    return str(ensure_model("tiny-qwen2-vl"))


def test_a_pairs_reference_logps_do_not_depend_on_its_batch(policy_path):
    torch.set_num_threads(2)
    table = pair_rows(8)
    scorer = ReferenceLogps(policy_path, average=False, round_idx=0)
    whole = scored(scorer, table, [])
    assert scored(scorer, table, [3]) == whole and scored(scorer, table, [1, 2, 5, 6]) == whole  # bit for bit
    assert all(c < 0 and r < 0 for c, r in whole)  # real log-probs: a sum over the answer's tokens
    # The check can fail: scored four pairs to a forward, the batch's padding moves some pairs' last bits.
    batched = ReferenceLogps(policy_path, average=False, round_idx=0, batch_pairs=4)
    differs = [scored(batched, table, cuts) != scored(batched, table, []) for cuts in ([3], [1, 2, 5, 6], [2, 6])]
    assert any(differs)
    assert np.allclose(scored(batched, table, [3]), whole, rtol=0, atol=1e-4)  # the same numbers, to float noise
