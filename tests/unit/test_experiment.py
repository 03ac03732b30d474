"""The experiment's pure parts: the inputs it writes per seed, the control's captions, arm configs, what the warm
start depends on, pair figures and the bar."""
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.apps.experiment import (WARMUP_DEPENDS, arm_config, epoch_losses, make_inputs, other_clip_captions,
                                       seed_config)
from pipelines.apps.experiment_report import bar, pair_figures
from rlaif.layout import RoundLayout
from pipelines.stages.io import write_table
from rlaif.config import ConfigError, load_config
from tests.unit.test_config import REPO

EXPERIMENT = REPO / "configs" / "experiment.yaml"
SMALL = {"experiment.warmup_videos": 3, "experiment.dev_videos": 2, "experiment.train_videos": 3,
         "experiment.heldout_videos": 2}


def test_inputs_split_clips_four_ways_with_labels_only_where_they_belong(tmp_path):
    cfg = seed_config(load_config(EXPERIMENT, SMALL), 1)
    paths = make_inputs(cfg, tmp_path)
    warmup = pq.read_table(paths["warmup"]).to_pylist()
    dev = pq.read_table(paths["dev"]).to_pylist()
    questions = pq.read_table(paths["questions"]).to_pylist()
    manifest = set(pq.read_table(paths["manifest"]).column("uri").to_pylist())
    captions = {r["uri"]: r["caption"] for r in pq.read_table(paths["captions"]).to_pylist()}
    warm_uris, dev_uris = {r["uri"] for r in warmup}, {r["uri"] for r in dev}
    assert len(warm_uris) == 3 and len(dev_uris) == 2 and not warm_uris & dev_uris
    assert set(pq.read_table(paths["warmup_manifest"]).column("uri").to_pylist()) == warm_uris | dev_uris
    assert not (warm_uris | dev_uris) & manifest  # warm-up and dev clips are never in the loop
    assert set(captions) == manifest and all(captions.values())
    # The warm start also learns each clip's caption; every other warm-up row is one question of a kind.
    assert sum(r["kind"] == "caption" for r in warmup) == 3 and all(r["answer"] for r in warmup)
    by_split = {s: [q for q in questions if q["split"] == s] for s in ("train", "eval")}
    assert {q["kind"] for q in by_split["train"]} <= set(cfg.experiment.train_kinds)  # no counts to train on
    assert "count" in {q["kind"] for q in by_split["eval"]}
    assert not {q["uri"] for q in by_split["train"]} & {q["uri"] for q in by_split["eval"]}
    real = [q for q in questions if q["kind"] == "real"]
    assert real and all(q["split"] == "eval" and q["reference_answer"] for q in real)
    carphone = [q["question"] for q in real if "carphone" in q["uri"]]  # one scene, two copies: different questions
    assert len(carphone) == len(set(carphone)) == 6
    for uri in {q["uri"] for q in questions if q["kind"] != "real"}:  # at most one question per kind per clip
        kinds = [q["kind"] for q in questions if q["uri"] == uri]
        assert len(kinds) == len(set(kinds)) >= 3


def test_the_control_reads_another_train_clips_caption_and_held_out_clips_keep_theirs(tmp_path):
    cfg = seed_config(load_config(EXPERIMENT, SMALL), 0)
    paths = make_inputs(cfg, tmp_path)
    own = {r["uri"]: r["caption"] for r in pq.read_table(paths["captions"]).to_pylist()}
    other = {r["uri"]: r["caption"] for r in pq.read_table(paths["captions_other"]).to_pylist()}
    train = {q["uri"] for q in pq.read_table(paths["questions"]).to_pylist() if q["split"] == "train"}
    assert set(other) == set(own)
    assert all(other[u] != own[u] for u in train) and sorted(other[u] for u in train) == sorted(own[u] for u in train)
    assert all(other[u] == own[u] for u in own if u not in train)


def test_other_clip_captions_is_a_derangement():
    caps = [{"uri": f"u{i}", "caption": f"c{i}"} for i in range(7)]
    moved = other_clip_captions(caps, seed=3)
    assert [m["uri"] for m in moved] == [c["uri"] for c in caps]
    assert all(m["caption"] != f"c{i}" for i, m in enumerate(moved))
    assert sorted(m["caption"] for m in moved) == sorted(c["caption"] for c in caps)
    with pytest.raises(ValueError):
        other_clip_captions(caps[:1], seed=0)


def test_every_shipped_arm_is_a_valid_run_config_changed_only_by_its_overrides(tmp_path):
    cfg = load_config(EXPERIMENT)
    paths = {name: tmp_path / f"{name}.parquet" for name in ("questions", "captions", "captions_other")}
    arms = {name: arm_config(cfg, name, o, "/models/warm", paths) for name, o in cfg.experiment.arms.items()}
    assert list(arms)[0] == "main" and set(arms) == {"main", "control_other_clip", "minilm_judge"}
    for arm in arms.values():
        assert arm.models.policy == "/models/warm" and arm.questions.file == str(paths["questions"])
        assert arm.seed == cfg.seed and arm.train.sft_weight > 0 and arm.train.reference == "fixed"
        assert not arm.needs_judge_engine() and not arm.judge.use_reference_answer  # no judge sees a reference
    main, control = arms["main"], arms["control_other_clip"]
    assert main.caption.file == str(paths["captions"]) and control.caption.file == str(paths["captions_other"])
    assert main.hash("rollout", "judge", "pairs", "train") == control.hash("rollout", "judge", "pairs", "train")
    assert arms["minilm_judge"].judge.function.endswith("CaptionSimilarity") and arms["minilm_judge"].pairs.min_margin < 1
    with pytest.raises(ValueError, match="evidence"):
        arm_config(cfg, "bad", {"evidence": "mine"}, "/models/warm", paths)
    with pytest.raises(ConfigError, match="did you mean"):
        arm_config(cfg, "typo", {"train.bta": 0.2}, "/models/warm", paths)


def test_the_warm_start_does_not_depend_on_the_arms_nor_the_held_out_set():
    cfg = load_config(EXPERIMENT)
    same = [load_config(EXPERIMENT, {"experiment.arms": {**cfg.experiment.arms, "new": {"train.beta": 0.5}}}),
            load_config(EXPERIMENT, {"experiment.heldout_videos": 7, "experiment.train_videos": 9})]
    other = [load_config(EXPERIMENT, {"experiment.warmup_lr": 0.5}), seed_config(cfg, 5),
             load_config(EXPERIMENT, {"experiment.scene": {"max_objects": 3}})]
    assert all(cfg.hash(*WARMUP_DEPENDS) == c.hash(*WARMUP_DEPENDS) for c in same)
    assert all(cfg.hash(*WARMUP_DEPENDS) != c.hash(*WARMUP_DEPENDS) for c in other)


def test_scene_options_are_checked():
    with pytest.raises(ConfigError, match="unknown keys"):
        load_config(EXPERIMENT, {"experiment.scene": {"radius": 0.3}})


def test_pair_figures_measure_preferences_against_ground_truth(tmp_path):
    rd = RoundLayout(tmp_path)
    write_table(pa.Table.from_pylist([
        {"prompt_id": "p0", "chosen": "blue", "rejected": "red"},   # right over wrong
        {"prompt_id": "p0", "chosen": "red", "rejected": "blue"},   # wrong over right
        {"prompt_id": "p1", "chosen": "two", "rejected": "2"},      # both right: not counted
        {"prompt_id": "p2", "chosen": "up", "rejected": "down"},    # no reference: not counted
    ]), rd.pairs)
    write_table(pa.table({"prompt_id": ["p0", "p0", "p1", "p1"], "response": ["blue", "x", "2", "3"]}),
                rd.rollouts)
    figures = pair_figures(rd, {"p0": "blue", "p1": "2"})
    assert figures == {"pairs": 4, "pairs_one_side_right": 2, "pair_label_accuracy": 0.5, "rollout_exact_match": 0.5}
    assert pair_figures(RoundLayout(tmp_path / "nothing"), {}) == {}


def _arm(delta, p, colour=(0.0, 1.0)):
    return {"change": {"main": {"delta": delta, "p": p},
                       "by_kind": {"colour": {"delta": colour[0], "p": colour[1]}, "shape": {"delta": 0.1, "p": 0.2}}}}


def test_the_bar_needs_every_seed():
    good = {"main": _arm(0.1, 0.001, colour=(0.2, 0.0001)), "control": _arm(0.0, 1.0)}
    weak = {"main": _arm(0.1, 0.03, colour=(0.2, 0.002)), "control": _arm(0.05, 0.005)}
    assert bar([{"arms": good}, {"arms": good}], "main", "control") == {
        "main_gains_every_seed": True, "control_does_not_gain": True, "object_attribute_gains": ["colour"]}
    assert bar([{"arms": good}, {"arms": weak}], "main", "control") == {
        "main_gains_every_seed": False, "control_does_not_gain": False, "object_attribute_gains": ["colour"]}
    losing = {"main": _arm(-0.2, 0.0001, colour=(-0.3, 0.0001))}
    assert bar([{"arms": losing}], "main", None) == {"main_gains_every_seed": False, "object_attribute_gains": []}


def test_the_warm_start_reports_its_first_and_last_epochs_mean_loss():
    history = [{"loss": x} for x in (4.0, 2.0, 6.0, 3.0, 1.0, 5.0)]  # 2 epochs of 3 steps
    assert epoch_losses(history, 2) == {"first_epoch_loss": 4.0, "last_epoch_loss": 3.0}
    assert epoch_losses(history, 1) == {"first_epoch_loss": 3.5, "last_epoch_loss": 3.5}
    assert epoch_losses([], 2) == {"first_epoch_loss": None, "last_epoch_loss": None}


def test_a_run_without_arms_reports_its_warm_start_and_gate_and_draws_no_plot(tmp_path):
    """experiment.arms={} (the warm start and the gate alone) gets its report, with no plot to draw."""
    from pipelines.apps.experiment_report import write_report
    from rlaif.layout import ExperimentLayout
    from rlaif.storage import RunPath

    cfg = seed_config(load_config(EXPERIMENT, {**SMALL, "experiment.arms": {}}), 1)
    paths = make_inputs(cfg, tmp_path / "inputs")
    colour = {"n": 4, "greedy": 0.25, "pass_at_k": 0.75, "other_clip_pass_at_k": 0.5, "grounded": 0.25,
              "grounded_p": 0.5}
    gate = {"k": 8, "temperature": 1.0, "dev_questions": 4, "by_kind": {"colour": colour}, "prior_only": {}}
    warmup = {"first_epoch_loss": 2.0, "last_epoch_loss": 0.5, "seconds": 1.0}
    results = write_report(cfg, RunPath.of(tmp_path), [{"seed": 1, "paths": paths, "gate": gate, "warmup": warmup,
                                                         "arms": {}}], None)
    layout = ExperimentLayout(RunPath.of(tmp_path))
    report = layout.report.read_text()
    assert results["bar"] == {} and "(no arms)" in report and "![per-round figures]" not in report
    assert "mean loss 2.000 in the first epoch, 0.500 in the last" in report
    assert "| 1 | colour | 4 | 0.25 | 0.75 | 0.50 |" in report
    assert not layout.plot.exists()
