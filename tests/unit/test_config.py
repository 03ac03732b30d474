from pathlib import Path

import pytest

from rlaif.config import ConfigError, RunConfig, load_config, parse_config

REPO = Path(__file__).resolve().parents[2]


def test_defaults_are_valid():
    cfg = parse_config({})
    assert cfg.ingest.num_frames == 8 and cfg.models.policy == "tiny-qwen2-vl"


def test_weights_travel_through_the_object_store_unless_asked():
    assert parse_config({}).loop.sync_transport == "object_store"
    assert parse_config({"loop": {"sync_transport": "collective"}}).loop.sync_transport == "collective"


def test_shared_memory_sync_needs_the_plain_cpu_kernel_and_shares_only_the_policy_pool():
    from rlaif.placement import plan_pools

    with pytest.raises(ConfigError, match="'shared_memory' needs pools.policy.cpu_gemm 'torch'"):
        parse_config({"loop": {"sync_transport": "shared_memory"}})
    cfg = parse_config({"loop": {"sync_transport": "shared_memory", "sync_transport_required": True},
                        "pools": {"policy": {"cpu_gemm": "torch"}}, "models": {"judge": "tiny-judge"}})
    plans = plan_pools(cfg)
    assert plans["policy"].shared_weights and not plans["judge"].shared_weights
    assert not plan_pools(parse_config({}))["policy"].shared_weights


def test_every_shipped_config_parses():
    configs = sorted((REPO / "configs").rglob("*.yaml"))
    assert configs, "configs/ should hold example run configs"
    for path in configs:
        assert isinstance(load_config(path), RunConfig)


def test_unknown_key_names_its_path_and_suggests(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("ingest:\n  num_frame: 4\n")
    with pytest.raises(ConfigError) as err:
        load_config(p)
    assert "ingest.num_frame: unknown key (did you mean 'num_frames'?)" in str(err.value)


def test_unknown_section(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("ingets: {}\n")
    with pytest.raises(ConfigError, match="ingets: unknown key .*'ingest'"):
        load_config(p)


@pytest.mark.parametrize("data, where", [
    ({"ingest": {"num_frames": 0}}, "ingest.num_frames"),
    ({"ingest": {"sampling": "random"}}, "ingest.sampling"),
    ({"ingest": {"frame_height": 16}}, "frame_height"),
    ({"name": "has space"}, "name"),
    ({"ingest": {"decoder": "no_colon"}}, "ingest.decoder"),
    ({"loop": {"sync_transport": "nccl"}}, "loop.sync_transport"),
])
def test_bad_values_are_reported(data, where):
    with pytest.raises(ConfigError, match=where):
        parse_config(data)


def test_all_problems_reported_at_once():
    with pytest.raises(ConfigError) as err:
        parse_config({"ingest": {"num_frames": -1, "batch_size": 0}})
    assert "ingest.num_frames" in str(err.value) and "ingest.batch_size" in str(err.value)


def test_not_yaml_and_not_mapping(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("ingest: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)
    p.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(p)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_overrides_and_hash(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("ingest:\n  num_frames: 4\n")
    a = load_config(p)
    b = load_config(p, {"ingest.num_frames": 6, "models.judge": "smollm2-135m-instruct"})
    assert b.ingest.num_frames == 6 and b.models.judge == "smollm2-135m-instruct"
    assert a.hash("ingest") != b.hash("ingest") and a.hash("models") != b.hash("models")
    assert a.hash("demo") == b.hash("demo")


def test_demo_yaml_is_what_rlaif_demo_runs():
    from pipelines.apps.demo import DEMO_OVERRIDES

    assert load_config(REPO / "configs" / "demo.yaml").model_dump() == parse_config(DEMO_OVERRIDES).model_dump()


def test_one_config_per_paper_selects_its_algorithm():
    cfgs = {p.stem: load_config(p) for p in (REPO / "configs").glob("*.yaml")}
    assert {"llava_hound", "vlm_rlaif", "isrt", "video_salmonn2", "mmaipv"} <= set(cfgs)
    assert cfgs["llava_hound"].train.reference == "fixed" and cfgs["llava_hound"].judge.kind == "score"
    assert cfgs["vlm_rlaif"].judge.kind == "aspects" and cfgs["vlm_rlaif"].judge.length_penalty > 0
    assert cfgs["isrt"].caption.self_retrospection and cfgs["isrt"].models.judge == "policy"
    s2 = cfgs["video_salmonn2"]
    assert s2.train.merge_each_round and s2.train.caption_sft_weight == 0.1 and s2.rebirth.enabled
    assert s2.eval.caption_metrics and s2.train.reference == "refresh"
    m = cfgs["mmaipv"]
    assert m.models.extra_responders and m.judge.kind == "function" and m.train.extrapolation_alpha > 1


def test_adapter_sync_needs_a_lora_that_carries_over():
    assert parse_config({"loop": {"sync": "adapter"}, "train": {"merge_each_round": False}}).loop.sync == "adapter"
    for train in ({}, {"finetune": "full"}):  # merged rounds, or no adapter: the engines' base would change
        with pytest.raises(ConfigError, match="loop.sync 'adapter' needs"):
            parse_config({"loop": {"sync": "adapter"}, "train": train})


def test_extrapolation_needs_merged_rounds():
    with pytest.raises(ConfigError, match="extrapolation_alpha needs merge_each_round"):
        parse_config({"train": {"extrapolation_alpha": 1.5, "merge_each_round": False}})


def test_full_finetuning_has_no_adapter_to_carry_over():
    assert parse_config({"train": {"finetune": "full"}}).train.finetune == "full"
    with pytest.raises(ConfigError, match="finetune 'full' has no adapter"):
        parse_config({"train": {"finetune": "full", "merge_each_round": False}})


def test_missing_input_files_are_reported_before_a_run():
    cfg = parse_config({"train": {"caption_sft_weight": 0.1}, "questions": {"source": "file"}})
    with pytest.raises(ConfigError) as err:
        cfg.check_inputs()
    assert "set caption.reference_file" in str(err.value) and "questions.file is not set" in str(err.value)
    parse_config({}).check_inputs()  # the defaults need no file
