"""Tiny VLMs that see: the random tiny-qwen2-vl taught to perceive synthetic clips, built locally like the test models.

A randomly initialised VLM answers with random tokens, and a warm start on a few labelled clips teaches it the
answer format and the background colour but not objects (shared/notes: pass@K with the right clip equalled pass@K
with another clip for colour, shape and motion). LLaVA's recipe fixes perception first, with captions: so does this.

* ``tiny-qwen2-vl-captioner``: tiny-qwen2-vl trained to caption synthetic clips (``PERCEPTION_STEPS`` batches of
  fresh scenes, the clip's exact caption as the target, the pipeline's own caption request as the prompt). No
  question-answer labels: this is the experiment's base model, the stand-in for a pretrained video LMM.
* ``tiny-qwen2-vl-warm``: the captioner, then fine-tuned on the questions of ``WARMUP_CLIPS`` labelled clips (one
  question per kind, plus the clip's caption so the captioning skill carries over to the answers). The demo's
  starting policy: its answers are words, and often right.

Both train on frames rendered straight from the scene (no H.264 round trip: the codec's chroma blur barely moves a
flat colour) at the ingest's geometry: 8 of 16 frames sampled uniformly, 112 x 112. Their scenes are drawn from
seeds no experiment or demo uses. Plain torch in one process: a model build, not a run (the runs train with Ray
Train and DeepSpeed); the captioner takes 4-7 minutes on 2 CPU cores and the warm model 1-2 more, once, then cached
(rlaif.testkit.tiny_models.ensure_model).
"""
from __future__ import annotations

import json
import logging
import math
import random
import time
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

# The scenes the perception pretraining sees, and the experiment's default: one or two objects a fifth of the frame
# in radius (2-3 patches of 14 px across), so the 1-block vision tower resolves their colour.
PERCEPTION_SCENE = {"min_objects": 1, "max_objects": 2, "object_size": 0.2}
PERCEPTION_STEPS = 800           # batches of fresh scenes (12,800 clips)
PERCEPTION_BATCH = 16
PERCEPTION_LR = 1e-3
WARMUP_CLIPS = 150
WARMUP_EPOCHS = 4
WARMUP_LR = 2e-3
NUM_FRAMES = 8
# Scene seeds: rng streams [stream, i], apart from the experiment's and the demo's (experiment.seeds, demo.seed).
PRETRAIN_STREAM, WARMUP_STREAM = 7_001, 7_002


def render_clip(stream: int, i: int, scene: dict | None = None) -> tuple[dict, np.ndarray]:
    """(truth, frames (8, 112, 112, 3) uint8) of synthetic clip i of a seed stream, sampled as ingest samples."""
    from rlaif.frames import uniform_indices
    from rlaif.testkit.synthetic_videos import make_scene, render_frames

    truth = make_scene(np.random.default_rng([stream, i]), **(scene or PERCEPTION_SCENE))
    return truth, render_frames(truth, uniform_indices(truth["n_frames"], NUM_FRAMES))


def one_per_kind(qa: list[dict], rng: random.Random) -> list[dict]:
    """One question drawn per kind (most of a clip's questions are counts: all of them would teach mostly "1")."""
    by_kind: dict[str, list[dict]] = {}
    for q in qa:
        by_kind.setdefault(q["kind"], []).append(q)
    return [rng.choice(by_kind[k]) for k in sorted(by_kind)]


def _loss(model, batch):
    from rlaif.logprobs import sequence_logps
    from rlaif.policy_model import answer_token_logps

    lp, mask = answer_token_logps(model, batch)
    return -(sequence_logps(lp, mask).sum() / mask.sum())


def _train(model, processor, batches, total_steps: int, lr: float, what: str) -> list[float]:
    """AdamW over `batches` (lists of (prompt, target, frames)), linear warm-up then cosine to a tenth of `lr`."""
    import torch

    from rlaif.policy_model import pad_id
    from rlaif.vlm_inputs import collate, encode_example

    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    warm = max(1, total_steps // 40)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm) * (
        0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, total_steps) / total_steps))))
    model.train()
    losses, start = [], time.time()
    for step, rows in enumerate(batches):
        batch = collate([encode_example(processor, p, t, f) for p, t, f in rows], pad_id(processor))
        loss = _loss(model, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step % 100 == 0 or step == total_steps - 1:
            log.info("%s: step %d/%d loss %.3f (%.0f s)", what, step + 1, total_steps, losses[-1], time.time() - start)
    model.eval()
    return losses


def caption_pretrain(model, processor, steps: int = PERCEPTION_STEPS, batch_size: int = PERCEPTION_BATCH,
                     lr: float = PERCEPTION_LR, scene: dict | None = None) -> list[float]:
    """Trains `model` in place to caption fresh synthetic scenes; returns the loss per step."""
    from rlaif.prompts import CAPTION_REQUEST
    from rlaif.testkit.synthetic_videos import caption_for

    def batches():
        for step in range(steps):
            clips = [render_clip(PRETRAIN_STREAM, step * batch_size + j, scene) for j in range(batch_size)]
            yield [(CAPTION_REQUEST, caption_for(truth), frames) for truth, frames in clips]

    return _train(model, processor, batches(), steps, lr, "caption pretraining")


def warmup_rows(clips: list[tuple[dict, np.ndarray]], seed: int, captions: bool = True) -> list[tuple]:
    """(prompt, target, frames) of labelled clips: one question per kind, and the caption request when `captions`."""
    from rlaif.prompts import CAPTION_REQUEST
    from rlaif.testkit.synthetic_videos import caption_for, questions_for

    rng = random.Random(seed)
    rows = []
    for truth, frames in clips:
        rows += [(q["question"], q["answer"], frames) for q in one_per_kind(questions_for(truth), rng)]
        if captions:
            rows.append((CAPTION_REQUEST, caption_for(truth), frames))
    return rows


def qa_warmup(model, processor, clips: int = WARMUP_CLIPS, epochs: int = WARMUP_EPOCHS, lr: float = WARMUP_LR,
              batch_size: int = 16, scene: dict | None = None, captions: bool = True) -> list[float]:
    """Fine-tunes `model` in place on the questions (and captions) of `clips` labelled clips; returns the losses."""
    rows = warmup_rows([render_clip(WARMUP_STREAM, i, scene) for i in range(clips)], seed=WARMUP_STREAM,
                       captions=captions)
    rng = random.Random(0)

    def batches():
        for _ in range(epochs):
            order = rows[:]
            rng.shuffle(order)
            yield from (order[i: i + batch_size] for i in range(0, len(order), batch_size))

    return _train(model, processor, batches(), epochs * math.ceil(len(rows) / batch_size), lr, "QA warm-up")


def _build(out_dir, name: str, base: str, base_path: str, train, settings: dict) -> Path:
    """Loads `base` (built already, at `base_path`), trains it in place with `train(model, processor)` -> losses, saves it as `name` into `out_dir`
    with a provenance file (the settings, the first and last losses, the seconds)."""
    import torch

    from rlaif.policy_model import load_policy

    torch.manual_seed(0)
    model, processor = load_policy(base_path)
    start = time.time()
    losses = train(model, processor)
    out = Path(out_dir)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    processor.tokenizer.save_pretrained(out)
    info = {"name": name, "base": base, **settings, "first_loss": losses[0],
            "last_loss": float(np.mean(losses[-10:])), "seconds": round(time.time() - start, 1)}
    (out / "rlaif_build.json").write_text(json.dumps(info, indent=2) + "\n")
    return out


def build_captioner(out_dir, base_path: str, base: str = "tiny-qwen2-vl") -> Path:
    """tiny-qwen2-vl-captioner (module docstring) into `out_dir`, from `base` built at `base_path`."""
    return _build(out_dir, "tiny-qwen2-vl-captioner", base, base_path, caption_pretrain, {
        "scene": PERCEPTION_SCENE, "steps": PERCEPTION_STEPS, "batch_size": PERCEPTION_BATCH, "lr": PERCEPTION_LR})


def build_warm(out_dir, base_path: str, base: str = "tiny-qwen2-vl-captioner") -> Path:
    """tiny-qwen2-vl-warm (module docstring) into `out_dir`, from `base` built at `base_path`."""
    return _build(out_dir, "tiny-qwen2-vl-warm", base, base_path, qa_warmup,
                  {"clips": WARMUP_CLIPS, "epochs": WARMUP_EPOCHS, "lr": WARMUP_LR})
