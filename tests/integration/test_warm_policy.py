"""The warm policy sees: tiny-qwen2-vl-warm (built here once, then cached) answers questions about clips it never
saw, decoded by the real ingest and answered by a vLLM engine, better with their own frames than with another clip's.
This is the gate of the experiment (pipelines.stages.gate) on fresh clips: the claim every learning result stands on."""
import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.orchestration.runner import run_pipeline
from pipelines.stages.gate import run_gate
from rlaif.config import load_config
from rlaif.layout import SeedLayout
from rlaif.models import resolve_model as ensure_model
from rlaif.testkit.synthetic_videos import make_scene, questions_for, write_synthetic_corpus
from rlaif.testkit.warm_models import PERCEPTION_SCENE, one_per_kind
from tests.unit.test_experiment import EXPERIMENT

pytestmark = pytest.mark.integration


def test_the_warm_policy_answers_from_the_video(ray_local, tmp_path):
    policy = ensure_model("tiny-qwen2-vl-warm")
    clips = write_synthetic_corpus(tmp_path / "clips", 24, seed=42, **PERCEPTION_SCENE)
    rng = random.Random(0)
    dev = [{"uri": str(c.path), "question": q["question"], "reference_answer": q["answer"], "kind": q["kind"]}
           for c in clips for q in one_per_kind(c.qa, rng) if q["kind"] in ("background", "colour")]
    labelled = [{"question": q["question"], "answer": q["answer"], "kind": q["kind"]}  # the prior-only baseline's
                for i in range(200) for q in questions_for(make_scene(np.random.default_rng([43, i]), **PERCEPTION_SCENE))]
    seed = SeedLayout(tmp_path)  # laid out as an experiment seed's folder: inputs/, warmup/
    seed.inputs.dir.mkdir()
    pq.write_table(pa.Table.from_pylist(dev), str(seed.inputs.dev))
    pq.write_table(pa.Table.from_pylist(labelled), str(seed.inputs.warmup))
    pq.write_table(pa.table({"uri": [str(c.path) for c in clips]}), str(seed.inputs.warmup_manifest))

    cfg = load_config(EXPERIMENT)
    run_pipeline(cfg, seed.warmup.dir, source=str(seed.inputs.warmup_manifest), loop=False)
    gate = run_gate(cfg, seed, policy)
    background, colour = gate["by_kind"]["background"], gate["by_kind"]["colour"]
    print(f"\nwarm policy on 24 fresh clips: background {background}\ncolour {colour}\nprior-only {gate['prior_only']}")
    assert background["n"] == 24 and background["greedy"] >= 0.8
    assert colour["n"] >= 15
    # Colour comes from the frames: right far more often with the clip's own frames than with another clip's,
    # and better than answering blind from the labelled answers' prior.
    assert colour["pass_at_k"] - colour["other_clip_pass_at_k"] >= 0.3 and colour["grounded_p"] < 0.01
    assert colour["greedy"] > gate["prior_only"]["colour"]["exact_match"] + 0.15
