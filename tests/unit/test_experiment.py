"""The experiment's pure parts: the question draw, the inputs it writes, arm configs, pair figures, the verdict."""
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.experiment import arm_config, make_inputs, one_question_per_kind
from pipelines.experiment_report import pair_figures, verdict
from pipelines.io import write_table
from rlaif.config import load_config
from rlaif.storage import RunPath
from tests.unit.test_config import REPO

EXPERIMENT = REPO / "configs" / "experiment.yaml"


def test_one_question_of_each_kind_drawn_with_the_seed():
    qa = [{"kind": k, "question": f"{k}{i}"} for k in ("count", "colour", "motion") for i in range(3)]
    picked = one_question_per_kind(qa, random.Random(0))
    assert sorted(q["kind"] for q in picked) == ["colour", "count", "motion"]
    assert picked == one_question_per_kind(qa, random.Random(0))


def test_inputs_split_clips_three_ways_and_hold_out_the_real_ones(tmp_path):
    cfg = load_config(EXPERIMENT, {"experiment.warmup_videos": 3, "experiment.train_videos": 2,
                                   "experiment.heldout_videos": 2})
    paths = make_inputs(cfg, tmp_path)
    warmup = pq.read_table(paths["warmup"]).to_pylist()
    questions = pq.read_table(paths["questions"]).to_pylist()
    manifest = set(pq.read_table(paths["manifest"]).column("uri").to_pylist())
    captions = {r["uri"]: r["caption"] for r in pq.read_table(paths["captions"]).to_pylist()}
    warm_uris = {r["uri"] for r in warmup}
    assert len(warm_uris) == 3 and not warm_uris & manifest  # warm-up clips are never in the loop
    assert set(captions) == manifest and all(captions.values())
    by_split = {s: {q["uri"] for q in questions if q["split"] == s} for s in ("train", "eval")}
    assert len(by_split["train"]) == 2 and not by_split["train"] & by_split["eval"]
    real = [q for q in questions if q["kind"] == "real"]
    assert real and all(q["split"] == "eval" and q["reference_answer"] for q in real)
    for uri in by_split["train"]:  # at most one question per kind per clip
        kinds = [q["kind"] for q in questions if q["uri"] == uri]
        assert len(kinds) == len(set(kinds)) >= 3


def test_every_arm_is_a_valid_run_config_changed_only_by_its_overrides(tmp_path):
    cfg = load_config(EXPERIMENT)
    paths = {name: tmp_path / f"{name}.parquet" for name in ("questions", "captions")}
    arms = {name: arm_config(cfg, name, overrides, "/models/warm", paths) for name, overrides in cfg.experiment.arms.items()}
    assert set(arms) == {"smollm2_judge", "function_judge", "function_judge_fixed_reference", "function_judge_rpo"}
    assert arms["function_judge_rpo"].train.sft_weight > 0 == arms["function_judge"].train.sft_weight
    for arm in arms.values():
        assert arm.models.policy == "/models/warm" and arm.questions.file == str(paths["questions"])
        assert arm.caption.source == "file" and arm.seed == cfg.seed and arm.loop.rounds >= 3
    assert arms["smollm2_judge"].models.judge == "smollm2-135m-instruct" and arms["smollm2_judge"].judge.kind == "score"
    fixed, refreshed = arms["function_judge_fixed_reference"], arms["function_judge"]
    assert (fixed.train.reference, refreshed.train.reference) == ("fixed", "refresh")
    assert fixed.hash("rollout", "judge", "pairs") == refreshed.hash("rollout", "judge", "pairs")
    assert not refreshed.needs_judge_engine()  # the scorer needs no LLM: no judge engine is started


def test_pair_figures_measure_preferences_against_ground_truth(tmp_path):
    rd = RunPath.of(tmp_path)
    write_table(pa.Table.from_pylist([
        {"prompt_id": "p0", "chosen": "blue", "rejected": "red"},   # right over wrong
        {"prompt_id": "p0", "chosen": "red", "rejected": "blue"},   # wrong over right
        {"prompt_id": "p1", "chosen": "two", "rejected": "2"},      # both right: not counted
        {"prompt_id": "p2", "chosen": "up", "rejected": "down"},    # no reference: not counted
    ]), rd / "pairs.parquet")
    write_table(pa.table({"prompt_id": ["p0", "p0", "p1", "p1"], "response": ["blue", "x", "2", "3"]}),
                rd / "rollouts.parquet")
    figures = pair_figures(rd, {"p0": "blue", "p1": "2"})
    assert figures == {"pairs": 4, "pairs_one_side_right": 2, "pair_label_accuracy": 0.5, "rollout_exact_match": 0.5}
    assert pair_figures(RunPath.of(tmp_path / "nothing"), {}) == {}


@pytest.mark.parametrize("before, after, word", [(0.30, 0.50, "improved"), (0.30, 0.32, "no change beyond noise"),
                                                 (0.50, 0.30, "got worse")])
def test_verdict_compares_the_last_round_with_the_start_within_two_standard_errors(before, after, word):
    rows = [{"round": -1, "answers": 200, "exact_match": before}, {"round": 2, "answers": 200, "exact_match": after}]
    assert verdict(rows).endswith(word)


def test_the_warm_start_does_not_depend_on_the_arms():
    from pipelines.experiment import WARMUP_DEPENDS

    cfg = load_config(EXPERIMENT)
    more_arms = load_config(EXPERIMENT, {"experiment.arms": {**cfg.experiment.arms, "new": {"train.beta": 0.5}}})
    other_lr = load_config(EXPERIMENT, {"experiment.warmup_lr": 0.5})
    assert cfg.hash(*WARMUP_DEPENDS) == more_arms.hash(*WARMUP_DEPENDS)  # an added arm reuses the warm policy
    assert cfg.hash(*WARMUP_DEPENDS) != other_lr.hash(*WARMUP_DEPENDS)
    assert cfg.hash("experiment") != more_arms.hash("experiment")
