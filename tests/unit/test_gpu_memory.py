"""rlaif.gpu_memory: the parameter counts it works from are the models' own, and `rlaif plan` refuses a trainer or an
engine that cannot fit a GPU."""
import pytest
import torch
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLConfig, Qwen2VLForConditionalGeneration

from pipelines.apps.cli import main
from rlaif.config import load_config
from rlaif.gpu_memory import GB, KNOWN_SHAPES, plan_memory, shape_from_config, trainer_memory

TEXT = dict(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]})  # head_dim 16 = 2 x 8


@pytest.mark.parametrize("config_cls, model_cls, vision", [
    (Qwen2VLConfig, Qwen2VLForConditionalGeneration, {"depth": 2, "embed_dim": 32, "hidden_size": 64, "num_heads": 2}),
    (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration,
     {"depth": 2, "hidden_size": 32, "intermediate_size": 48, "out_hidden_size": 64, "num_heads": 2})])
def test_parameter_count_is_the_models(config_cls, model_cls, vision):
    config = config_cls(**TEXT, text_config=TEXT, vision_config=vision, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = model_cls(config)
    shape = shape_from_config(config.to_dict())
    language = sum(p.numel() for n, p in model.named_parameters() if "visual" not in n)
    tower = sum(p.numel() for n, p in model.named_parameters() if "visual" in n)
    assert shape.params - shape.vision_params == language  # exact: every matrix, norm and bias
    assert shape.vision_params == pytest.approx(tower, rel=0.02)  # the tower's norms and biases are left out


def test_known_shapes_match_published_sizes():
    published = {"Qwen/Qwen2.5-VL-7B-Instruct": 8.29, "Qwen/Qwen2.5-VL-3B-Instruct": 3.75,
                 "Qwen/Qwen2-VL-2B-Instruct": 2.21, "Qwen/Qwen2.5-7B-Instruct": 7.62, "Qwen/Qwen2.5-72B-Instruct": 72.7}
    for name, billions in published.items():
        assert KNOWN_SHAPES[name].params / 1e9 == pytest.approx(billions, rel=0.01), name


def test_zero3_checkpointing_and_lora_each_cut_their_term():
    shape = KNOWN_SHAPES["Qwen/Qwen2.5-VL-7B-Instruct"]
    kw = dict(workers=4, bf16=True, lora_r=64, micro_batch_size=2, frames=16, height=336, width=336, text_tokens=320)
    full2 = trainer_memory(shape, zero_stage=2, finetune="full", gradient_checkpointing=False, **kw)
    full3 = trainer_memory(shape, zero_stage=3, finetune="full", gradient_checkpointing=False, **kw)
    lora3 = trainer_memory(shape, zero_stage=3, finetune="lora", gradient_checkpointing=False, **kw)
    ckpt = trainer_memory(shape, zero_stage=3, finetune="lora", gradient_checkpointing=True, **kw)
    assert full3.weights == pytest.approx(full2.weights / 4)
    assert full2.optimizer == pytest.approx(shape.params * 12 / 4)  # fp32 master + Adam m, v, sharded over 4
    assert lora3.optimizer < full3.optimizer / 40  # a rank-64 LoRA is ~2% of the 8.3 B weights
    assert ckpt.activations < lora3.activations / 10
    one_worker = trainer_memory(shape, zero_stage=2, finetune="full", gradient_checkpointing=True, **{**kw, "workers": 1})
    assert one_worker.total > 80 * GB > ckpt.total


def test_plan_refuses_what_does_not_fit(capsys):
    preset = "configs/gpu/qwen25vl7b_judge7b_8gpu.yaml"
    cfg = load_config(preset)
    table, fits = plan_memory(cfg, 80)
    assert fits and "gradient checkpointing on" in table
    # Full fine-tuning of the 7B on one worker keeps the whole optimizer state there: 100 GB of it alone.
    args = [preset, "--nodes", "1", "--gpus-per-node", "8", "--set", "train.finetune=full", "--set", "train.workers=1"]
    assert main(["plan", *args]) == 1
    assert "DOES NOT FIT in GPU memory" in capsys.readouterr().out
    # A 72B judge on one 80 GB GPU: its 145 GB of weights cannot load.
    _, fits = plan_memory(load_config("configs/gpu/qwen25vl7b_judge72b_8gpu.yaml", {"pools.judge.tensor_parallel_size": 1}), 80)
    assert not fits
    assert main(["plan", preset, "--nodes", "1", "--gpus-per-node", "8"]) == 0


@pytest.mark.parametrize("finetune", ["lora", "full"])
def test_gradient_checkpointing_gives_the_same_gradients(finetune):
    """train.gradient_checkpointing (what the memory estimate assumes) recomputes activations without changing the
    gradients, a LoRA's included (the reentrant form would give it none behind frozen embeddings)."""
    from peft import get_peft_model

    from pipelines.stages.train import enable_gradient_checkpointing, lora_config
    from rlaif.config import TrainConfig

    def grads(checkpointing: bool) -> dict:
        config = Qwen2VLConfig(**TEXT, text_config=TEXT, vision_config={"depth": 1, "embed_dim": 32, "hidden_size": 64,
                                                                         "num_heads": 2})
        torch.manual_seed(0)
        model = Qwen2VLForConditionalGeneration(config)
        if finetune == "lora":
            model = get_peft_model(model, lora_config(TrainConfig(lora_r=4)))
            for n, p in model.named_parameters():  # LoRA's B starts at zero: give it values so A gets gradients
                if "lora_B" in n:
                    torch.nn.init.normal_(p, std=0.1)
        if checkpointing:
            enable_gradient_checkpointing(model)
        model.train()
        ids = torch.randint(0, 1000, (2, 12), generator=torch.Generator().manual_seed(1))
        model(input_ids=ids, labels=ids).loss.backward()
        return {n: p.grad for n, p in model.named_parameters() if p.requires_grad}

    plain, recomputed = grads(False), grads(True)
    assert plain.keys() == recomputed.keys() and plain
    # (text-only inputs: the vision tower gets no gradient either way)
    assert all(g is not None for n, g in recomputed.items() if "visual" not in n)
    for name, g in plain.items():
        assert (recomputed[name] is None) == (g is None), name
        if g is not None:
            torch.testing.assert_close(recomputed[name], g, rtol=1e-4, atol=1e-6)
