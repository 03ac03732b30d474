import pytest


@pytest.fixture(scope="session")
def ray_local():
    """One real local Ray cluster shared by the integration tests."""
    import ray

    from pipelines.orchestration.ray_env import init_ray
    from rlaif.config import RayConfig

    init_ray(RayConfig())
    yield ray
    ray.shutdown()


# The machinery tests' model set: the random-weight tiny VLM (nothing to build), a random-weight LLM judge (so the
# judge pool, structured outputs and its failures run) and a LoRA (so merge and broadcast run). Random-weight models
# need sampling to give varied scores, and never stop (every answer is cut at max_tokens).
MACHINERY = {"models.policy": "tiny-qwen2-vl", "models.judge": "tiny-judge", "judge.kind": "score",
             "judge.max_tokens": 48, "judge.temperature": 1.0, "caption.temperature": 1.0,
             "pairs.truncated_chosen": True, "train.finetune": "lora", "train.sft_weight": 0.0,
             "train.reference": "refresh", "train.micro_batch_size": 2}
# The tiny demo run the loop and resume tests share: two rounds on 4 synthetic clips and 2 broken files, with a
# training checkpoint every step (so that a run killed mid-training has one to resume from).
TINY = {**MACHINERY, "demo.synthetic_videos": 4, "demo.real_clips": False, "demo.broken_files": 2, "loop.rounds": 2,
        "rollout.max_tokens": 8, "caption.max_tokens": 16, "loop.eval_max_tokens": 8, "questions.max_per_video": 2,
        "questions.eval_fraction": 0.3, "train.checkpoint_every": 1, "train.epochs": 3, "train.lr": 0.01}


@pytest.fixture(scope="session")
def tiny_config(tmp_path_factory):
    """The tiny demo as a run config file over one shared input folder: every run of it sees the same video ids."""
    import copy

    import yaml

    from pipelines.apps.demo import DEMO_OVERRIDES, make_demo_inputs
    from rlaif.config import parse_config, set_dotted

    root = tmp_path_factory.mktemp("tiny-inputs")
    data = copy.deepcopy(DEMO_OVERRIDES)
    for key, value in TINY.items():
        set_dotted(data, key, value)
    cfg = parse_config(data)
    manifest, questions = make_demo_inputs(cfg.demo, root / "inputs")
    cfg.ingest.source, cfg.questions.file = str(manifest), str(questions)
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    return path


@pytest.fixture(scope="session")
def tiny_run(ray_local, tiny_config, tmp_path_factory):
    """The tiny config run once, uninterrupted, in this process: (config, run folder, manifest)."""
    from pipelines.orchestration.runner import run_pipeline
    from rlaif.config import load_config

    cfg = load_config(tiny_config)
    run_dir = tmp_path_factory.mktemp("tiny-run")
    return cfg, run_dir, run_pipeline(cfg, run_dir)
