"""The train stage's checkpoint restore (pipelines.stages.train) on real DeepSpeed engines (ZeRO-0, 2 and 3, one CPU
rank, in a child process so that its process group never meets another test's): a checkpoint saved without its
frozen parameters loads strictly and gives back every trainable tensor bit for bit (the digests saved with it
match), and a checkpoint that lacks a trainable tensor, or holds one the model does not have, is refused instead of
being loaded in part. Also: a batch's digest (what the history records per step) names its rows and their order."""
import json
import os
import socket
import subprocess
import sys

import pyarrow as pa

from pipelines.stages.train import batch_digest, deepspeed_config
from rlaif.config import TrainConfig


def test_a_batch_digest_names_its_rows_and_their_order_not_their_frames():
    rows = [{"prompt_id": f"p{i}", "video_id": "v", "frames": bytes([i]), "frames_shape": [1, 1, 1, 1],
             "duration_s": 1.0, "chosen": "a"} for i in range(3)]
    a = pa.Table.from_pylist(rows)
    assert batch_digest(a.slice(0, 2)) != batch_digest(a.slice(1, 2))  # other rows
    assert batch_digest(a.take([0, 1])) != batch_digest(a.take([1, 0]))  # another order
    other_frames = a.set_column(a.schema.get_field_index("frames"), "frames", pa.array([b"x"] * 3))
    assert batch_digest(a) == batch_digest(other_frames)  # frames are not hashed (the row's ids are)


def test_one_fp32_worker_runs_zero_stage_0_and_everything_else_the_stage_asked():
    stage = lambda **kw: deepspeed_config(TrainConfig(**kw))["zero_optimization"]["stage"]  # noqa: E731
    assert stage(workers=1) == 0  # nothing to partition: DeepSpeed steps torch's optimizer on the parameters
    assert stage(workers=2) == 2 and stage(workers=1, zero_stage=3) == 3
    assert stage(workers=1, precision="bf16") == 2  # bf16's stage 0 is DeepSpeed's BF16_Optimizer, not plain torch


def test_a_restore_is_strict_and_bitwise():
    out = subprocess.run([sys.executable, "-m", "tests.unit.test_train_restore"], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert found["restored_equal"] and found["digests_equal"] and found["trained_away_from_init"]
    assert found["zero3_restored_equal"] and found["zero0_restored_equal"]
    assert "missing" in found["lacks_a_trainable_tensor"] and "lora_B" in found["lacks_a_trainable_tensor"]
    assert "unexpected" in found["holds_an_unknown_tensor"]
    assert found["changed_after_load"] == ["lora_B"], "a tensor that differs by one ulp is caught"


def _scenario() -> dict:
    """Run in the child: save a trained engine's checkpoint, load it into a fresh engine, then tamper with it."""
    import tempfile

    import deepspeed
    import torch

    from pipelines.stages.train import _skip_deepspeed_shm_build, strict_trainable_load, trainable_digests

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    _skip_deepspeed_shm_build()
    deepspeed.init_distributed(dist_backend="gloo")

    class Tiny(torch.nn.Module):  # a frozen base and a trainable low-rank pair, as a LoRA has
        def __init__(self):
            super().__init__()
            self.base = torch.nn.Linear(8, 8)
            self.lora_A = torch.nn.Linear(8, 2, bias=False)
            self.lora_B = torch.nn.Linear(2, 8, bias=False)
            self.base.requires_grad_(False)

        def forward(self, x):
            return self.base(x) + self.lora_B(self.lora_A(x))

    config = {"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1, "zero_optimization": {"stage": 2},
              "optimizer": {"type": "AdamW", "params": {"lr": 0.1, "torch_adam": True}}, "steps_per_print": 10**9}

    def engine(seed: int, stage: int = 2):
        torch.manual_seed(seed)
        model = Tiny()
        return deepspeed.initialize(model=model, config={**config, "zero_optimization": {"stage": stage}},
                                    model_parameters=[p for p in model.parameters() if p.requires_grad])[0]

    def load(e, d) -> str:
        try:
            e.load_checkpoint(d, load_module_strict=True, custom_load_fn=strict_trainable_load(e))
            return "loaded"
        except RuntimeError as err:
            return str(err)

    def train(e):
        for _ in range(3):
            loss = e(torch.randn(2, 8)).pow(2).mean()
            e.backward(loss)
            e.step()

    def round_trip(stage: int) -> bool:
        """A trained engine's checkpoint loads into a fresh one and gives back its trainable tensors bit for bit."""
        zero3 = stage == 3  # the weights are partitioned: digests gather them one by one
        with tempfile.TemporaryDirectory() as d:
            trained = engine(0, stage=stage)
            train(trained)
            saved = trainable_digests(trained, zero3=zero3)
            trained.save_checkpoint(d, tag="t", exclude_frozen_parameters=True)
            fresh = engine(1, stage=stage)
            return load(fresh, d) == "loaded" and trainable_digests(fresh, zero3=zero3) == saved

    # Stage 0: what one fp32 worker runs (pipelines.stages.train.zero_stage).
    found = {"zero3_restored_equal": round_trip(3), "zero0_restored_equal": round_trip(0)}
    trained = engine(0)
    start = trainable_digests(trained, zero3=False)
    train(trained)
    saved = trainable_digests(trained, zero3=False)
    found["trained_away_from_init"] = saved != start
    with tempfile.TemporaryDirectory() as d:
        trained.save_checkpoint(d, tag="t", exclude_frozen_parameters=True)
        fresh = engine(0)  # the same frozen base, fresh trainable weights, as a restarted worker has
        found["restored_equal"] = load(fresh, d) == "loaded"
        found["digests_equal"] = trainable_digests(fresh, zero3=False) == saved
        with torch.no_grad():  # one ulp off in one tensor: the digest check names it
            w = fresh.module.lora_B.weight
            w.view(-1)[0] = torch.nextafter(w.view(-1)[0], torch.tensor(1e9))
        found["changed_after_load"] = sorted(n.split(".")[0] for n, h in trainable_digests(fresh, zero3=False).items()
                                             if saved[n] != h)
        state_file = os.path.join(d, "t", "mp_rank_00_model_states.pt")
        state = torch.load(state_file, weights_only=False)
        for case, change in (("lacks_a_trainable_tensor", lambda m: m.pop("lora_B.weight")),
                             ("holds_an_unknown_tensor", lambda m: m.__setitem__("extra.weight", torch.zeros(1)))):
            tampered = {**state, "module": dict(state["module"])}
            change(tampered["module"])
            torch.save(tampered, state_file)
            found[case] = load(engine(0), d)
    return found


if __name__ == "__main__":
    print(json.dumps(_scenario()))
