"""One DPO round on real Ray Train + DeepSpeed (ZeRO-2 and ZeRO-3), and the new policy reaching a live vLLM policy
engine, as broadcast weights (over the collective transport, from inside the Ray Train worker) or as a hot-loaded
LoRA adapter (loop.sync): after the round, the engine (never restarted) generates exactly what transformers generates
with the saved trained weights, and no longer what the starting policy generated."""
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
import torch

from actors.vllm_engine import EngineActor
from actors.weight_sync import broadcast_weights, saved_weights
from pipelines.stages.ingest import run_ingest
from pipelines.stages.train import run_train
from rlaif.config import IngestConfig, parse_config
from rlaif.layout import RoundLayout, RunLayout
from rlaif.policy_model import answer_logps, load_policy, pair_batch
from rlaif.prompts import video_question_messages
from rlaif.schemas import frames_of
from rlaif.testkit.synthetic_videos import write_synthetic_corpus
from rlaif.testkit.tiny_models import ensure_model
from rlaif.vlm_inputs import encode_prompt

pytestmark = pytest.mark.integration
GREEDY = {"n": 1, "temperature": 0.0, "max_tokens": 8}


@pytest.fixture(scope="module")
def videos(ray_local, tmp_path_factory):
    root = tmp_path_factory.mktemp("bcast")
    clips = write_synthetic_corpus(root / "in", 4, seed=5)
    run_ingest(IngestConfig(num_frames=8), root, [str(c.path) for c in clips])
    return root, pq.read_table(root / "videos.parquet").to_pylist()


def _engine(**kwargs):
    engine = EngineActor.options(num_cpus=0.5).remote("tiny-qwen2-vl", role="policy", max_model_len=1024, **kwargs)
    ray.get(engine.health.remote())
    return engine


@pytest.fixture(scope="module")
def policy_engine(ray_local):
    engine = _engine()
    yield engine
    ray.kill(engine)


@pytest.fixture(scope="module")
def adapter_engine(ray_local):
    """An engine that can hot-load LoRA adapters (loop.sync adapter)."""
    engine = _engine(adapter_rank=8)
    yield engine
    ray.kill(engine)


@pytest.fixture(scope="module")
def shared_engine(ray_local):
    """An engine on the plain CPU kernel with its parameters in shared memory (loop.sync_transport shared_memory)."""
    engine = _engine(cpu_gemm="torch", shared_weights=True)
    yield engine
    ray.kill(engine)


def _requests(rows):
    return [{"messages": video_question_messages("What colour is the circle?"), "frames": frames_of(r)} for r in rows]


def _hf_greedy(path, rows):
    model, processor = load_policy(path)
    out = []
    for r in rows:
        enc = encode_prompt(processor, "What colour is the circle?", frames_of(r))
        with torch.no_grad():
            ids = model.generate(**enc, max_new_tokens=8, do_sample=False)
        out.append(processor.tokenizer.decode(ids[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip())
    return out


def _pairs(rows, path):
    """Hand-made preferences (answer in words vs gibberish) with reference log-probs from the starting policy."""
    model, processor = load_policy(path)
    items = [{"prompt_id": f"{r['video_id']}-q0", "video_id": r["video_id"], "question": "What colour is the circle?",
              "chosen": "the circle is red and it moves left", "rejected": "blue blue square square", "round": 0,
              "score_chosen": 5.0, "score_rejected": 1.0, "chosen_tokens": 9, "rejected_tokens": 4,
              "frames": r["frames"], "frames_shape": r["frames_shape"]} for r in rows]
    with torch.no_grad():
        total, _ = answer_logps(model, pair_batch(processor, items, True))
    n = len(items)
    for i, item in enumerate(items):
        item["ref_logp_chosen"], item["ref_logp_rejected"] = float(total[i]), float(total[n + i])
        del item["frames"], item["frames_shape"]
    return pa.Table.from_pylist(items)


@pytest.mark.parametrize("zero_stage, sync, transport", [(2, "weights", "collective"), (3, "adapter", "collective"),
                                                        (2, "weights", "shared_memory")])
def test_round_trains_and_reaches_the_live_engine(videos, request, tmp_path, zero_stage, sync, transport):
    """sync weights: the merged weights are sent by trainer rank 0, over a gloo group of its own next to Ray Train's
    (collective) or written straight into the engine's shared parameters (shared_memory); sync adapter: the engine
    keeps the starting weights and hot-loads the round's LoRA. Either way the engine then answers as the saved merged
    policy does."""
    root, rows = videos
    fixture = {"adapter": "adapter_engine", "weights": "policy_engine"}[sync]
    policy_engine = request.getfixturevalue("shared_engine" if transport == "shared_memory" else fixture)
    start = ensure_model("tiny-qwen2-vl")
    before = [s[0]["text"].strip() for s in ray.get(policy_engine.generate.remote(_requests(rows), GREEDY))]
    assert before == _hf_greedy(start, rows)  # the engine starts as the saved starting policy

    cfg = parse_config({"name": f"bcast{zero_stage}", "loop": {"sync": sync, "sync_transport": transport,
                                                               "sync_transport_required": True},
                        "pools": {"policy": {"cpu_gemm": "torch" if transport == "shared_memory" else "onednn"}},
                        "train": {"workers": 2, "zero_stage": zero_stage, "lr": 0.05, "epochs": 3,
                                  "micro_batch_size": 1, "merge_each_round": sync == "weights",
                                  # ZeRO-3 also recomputes activations (what the GPU presets run with)
                                  "gradient_checkpointing": zero_stage == 3}})
    round_dir = tmp_path / "round_0"
    round_dir.mkdir()
    shutil.copytree(root / "videos.parquet", tmp_path / "videos.parquet")
    # The train stage's call for round 0 either way: a fresh LoRA on the starting policy (merge_each_round), or the
    # LoRA that carries over (sync adapter) with no earlier adapter yet.
    result = run_train(cfg, RunLayout(tmp_path), RoundLayout(round_dir), _pairs(rows, start), engines=[policy_engine],
                       lora_base=start, reference=start)

    assert result["engines_synced"] == 1 and result["sync_mode"] == sync and result["step"] == 6
    assert result.get("sync_transport") == (transport if sync == "weights" else None)
    health = ray.get(policy_engine.health.remote())
    assert health["weights"] == str(round_dir / "policy")
    assert (health["adapter"] is not None) == (sync == "adapter")
    history = result["history"]
    assert len(history) == 6 and history[-1]["reward_margin"] > history[0]["reward_margin"]
    assert (round_dir / "policy" / "config.json").exists() and (round_dir / "policy" / "adapter").exists()
    assert list((tmp_path / "ray_train").rglob("*model_states.pt")), "Ray Train kept a DeepSpeed checkpoint"

    after = [s[0]["text"].strip() for s in ray.get(policy_engine.generate.remote(_requests(rows), GREEDY))]
    assert after == _hf_greedy(str(round_dir / "policy"), rows)  # the live engine serves the trained weights
    assert after != before

    # The starting weights, sent back from the saved folder (the resume path), restore the starting outputs
    # (an engine that held an adapter drops it: it belonged to the weights just replaced).
    broadcast_weights([policy_engine], saved_weights(start).items())
    restored = [s[0]["text"].strip() for s in ray.get(policy_engine.generate.remote(_requests(rows), GREEDY))]
    assert restored == before and ray.get(policy_engine.health.remote())["adapter"] is None
