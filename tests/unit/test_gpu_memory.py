"""rlaif.gpu_memory: the parameter counts it works from are the models' own, and `rlaif plan` refuses a trainer or an
engine that cannot fit a GPU."""
import pytest
import torch
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLConfig, Qwen2VLForConditionalGeneration

from pipelines.apps.cli import main
from rlaif.config import TrainConfig, load_config
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


@pytest.mark.parametrize("lora_r", [None, 8])
@pytest.mark.parametrize("hidden, ffn, heads, kv_heads", [(128, 256, 4, 2), (192, 1100, 6, 6)])
def test_layer_activations_are_what_a_layer_keeps_for_backward(hidden, ffn, heads, kv_heads, lora_r):
    """The estimate's bytes per token a language-model layer keeps is what transformers' Qwen2 layer saves for its
    backward pass in bf16 (every tensor autograd saves that is not a weight, counted once per storage), to 2%."""
    from peft import LoraConfig, get_peft_model

    def saved_bytes(layers: int, tokens: int) -> int:
        text = {**TEXT, "hidden_size": hidden, "intermediate_size": ffn, "num_attention_heads": heads,
                "num_key_value_heads": kv_heads, "num_hidden_layers": layers,
                "rope_scaling": {"type": "mrope", "mrope_section": [4, 6, 6]}}  # head_dim 32
        config = Qwen2VLConfig(**text, text_config=text, vision_config={"depth": 1, "embed_dim": 32, "hidden_size": hidden,
                                                                         "num_heads": 2})
        torch.manual_seed(0)
        model = Qwen2VLForConditionalGeneration(config).to(torch.bfloat16)
        if lora_r:
            model = get_peft_model(model, LoraConfig(r=lora_r, target_modules=TrainConfig().lora_target))
        weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
        saved = {}

        def pack(t):
            storage = t.untyped_storage()
            if storage.data_ptr() not in weights:
                saved[storage.data_ptr()] = max(saved.get(storage.data_ptr(), 0), storage.nbytes())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(input_ids=torch.randint(0, 900, (1, tokens)), logits_to_keep=1)
        return sum(saved.values())

    tokens = 96
    per_layer = (saved_bytes(3, tokens) - saved_bytes(1, tokens)) / 2 / tokens
    shape = shape_from_config(Qwen2VLConfig(**{**TEXT, "hidden_size": hidden, "intermediate_size": ffn,
                                               "num_attention_heads": heads, "num_key_value_heads": kv_heads}).to_dict())
    assert shape.layer_activation_bytes(lora_r, 2) == pytest.approx(per_layer, rel=0.02)


def test_zero3_checkpointing_and_lora_each_cut_their_term():
    shape = KNOWN_SHAPES["Qwen/Qwen2.5-VL-7B-Instruct"]
    kw = dict(workers=4, bf16=True, lora_r=64, micro_batch_size=2, frames=16, height=336, width=336, text_tokens=320,
              answer_tokens=256)
    full2 = trainer_memory(shape, zero_stage=2, finetune="full", gradient_checkpointing=False, **kw)
    full3 = trainer_memory(shape, zero_stage=3, finetune="full", gradient_checkpointing=False, **kw)
    lora3 = trainer_memory(shape, zero_stage=3, finetune="lora", gradient_checkpointing=False, **kw)
    ckpt = trainer_memory(shape, zero_stage=3, finetune="lora", gradient_checkpointing=True, **kw)
    assert full3.weights == pytest.approx(full2.weights / 4)
    assert full2.optimizer == pytest.approx(shape.params * 12 / 4)  # fp32 master + Adam m, v, sharded over 4
    assert lora3.optimizer < full3.optimizer / 40  # a rank-64 LoRA is ~2% of the 8.3 B weights
    assert ckpt.activations < lora3.activations / 10
    # a trained tower (full fine-tuning) keeps its blocks' activations: 4 patches a video token, 32 blocks of 1280
    patches = 2 * 2 * shape.video_tokens(16, 336, 336) * 4
    language_only = full3.activations - 32 * patches * 1280 * 34
    assert language_only == pytest.approx(shape.layers * 2 * 2 * (shape.video_tokens(16, 336, 336) + 320)
                                          * shape.layer_activation_bytes(None, 2))
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
    gradients, a LoRA's included (the reentrant form would give it none behind frozen embeddings); and behind a
    frozen vision tower (LoRA) the backward pass does not run through the tower, as it did while transformers'
    input-embedding hooks made the tower's output require grad."""
    from peft import get_peft_model

    from pipelines.stages.train import lora_config
    from rlaif.config import TrainConfig
    from rlaif.policy_model import enable_gradient_checkpointing

    def grads(checkpointing: bool) -> tuple[dict, bool]:
        config = Qwen2VLConfig(**TEXT, text_config=TEXT, vision_config={"depth": 1, "embed_dim": 32, "hidden_size": 64,
                                                                         "num_heads": 2},
                               image_token_id=998, video_token_id=997, vision_start_token_id=996, vision_end_token_id=995)
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
        tower = []
        visual = next(m for n, m in model.named_modules() if n.endswith("visual"))
        visual.register_forward_hook(lambda module, args, out: tower.append(out.pooler_output.requires_grad))
        # one video of 2 frames of 28x28: a 1 x 2 x 2 grid of patches, merged 2 x 2 into one video token
        text = torch.randint(0, 990, (2, 12), generator=torch.Generator().manual_seed(1))
        ids = torch.cat([torch.tensor([[996, 997, 995]] * 2), text], dim=1)
        pixels = torch.randn(2 * 4, 3 * 2 * 14 * 14, generator=torch.Generator().manual_seed(2))
        model(input_ids=ids, labels=ids, mm_token_type_ids=(ids == 997).long() * 2, pixel_values_videos=pixels,
              video_grid_thw=torch.tensor([[1, 2, 2]] * 2)).loss.backward()
        return {n: p.grad for n, p in model.named_parameters() if p.requires_grad}, tower[0]

    (plain, plain_tower), (recomputed, recomputed_tower) = grads(False), grads(True)
    assert plain.keys() == recomputed.keys() and plain
    assert all(g is not None for g in recomputed.values())  # the video reaches every trainable weight, the tower's too
    for name, g in plain.items():
        torch.testing.assert_close(recomputed[name], g, rtol=1e-4, atol=1e-6)
    # the tower's output needs a gradient only when the tower trains
    assert plain_tower == recomputed_tower == (finetune == "full")
