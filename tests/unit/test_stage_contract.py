"""Every stage of the loop is a function of one StageContext that declares the config it depends on, and every
config section is read by some stage or is declared not to change any stage's output (so a new section cannot be
forgotten by --resume)."""
import inspect

from pipelines.orchestration.loop import round_stages
from pipelines.orchestration.resume import Stages
from pipelines.stages.caption import caption
from pipelines.stages.describe import describe
from pipelines.stages.evaluate import evaluate
from pipelines.stages.ingest import ingest
from pipelines.stages.judge import judge, rollout_judge
from pipelines.stages.pairs import pairs
from pipelines.stages.questions import questions
from pipelines.stages.rebirth import rebirth
from pipelines.stages.rollout import rollout
from pipelines.stages.train import train
from rlaif.config import RunConfig, parse_config
from rlaif.manifest import Manifest

STAGES = [ingest, caption, questions, evaluate, describe, rollout, judge, rollout_judge, pairs, train, rebirth]
# Sections no stage output depends on: names, where and how things run, and the other commands' settings.
NOT_OUTPUTS = {"name", "run_dir", "pools", "serve", "ray", "demo", "experiment", "audit"}


def test_every_stage_takes_one_context_and_declares_real_config_keys():
    cfg = RunConfig()
    for fn in STAGES:
        assert list(inspect.signature(fn).parameters) == ["ctx"], fn.__name__
        assert fn.depends, fn.__name__
        cfg.hash(*fn.depends)  # each declared key exists (a typo raises KeyError)


def test_every_config_section_is_read_by_a_stage_or_declared_not_to_change_outputs():
    declared = {key.split(".")[0] for fn in STAGES for key in fn.depends}
    sections = set(RunConfig.model_fields)
    assert declared <= sections
    assert sections - declared == NOT_OUTPUTS


def test_a_rounds_stages_follow_the_config():
    assert [n for n, _ in round_stages(parse_config({}))] == ["rollout_judge", "pairs", "train", "eval"]
    assert [n for n, _ in round_stages(parse_config({"loop": {"stream_judge": False},
                                                     "caption": {"self_retrospection": True}}))] == [
        "describe", "rollout", "judge", "pairs", "train", "eval"]


def test_a_stage_hash_covers_the_stages_before_it(tmp_path):
    """A change read only by an earlier stage (ingest) changes a later stage's key too: its inputs changed."""
    keys = []
    for cfg in (parse_config({}), parse_config({"ingest": {"num_frames": 4}})):
        stages = Stages(cfg, Manifest(tmp_path / str(len(keys))), resume=False)
        stages.run("ingest", ingest.depends, lambda: 1)
        keys.append(stages.run("questions", questions.depends, lambda: 1)["config_hash"])
    assert keys[0] != keys[1]
