"""The dev-split measurement behind the warm policy's design (rlaif/testkit/warm_models.py): does a perception warm start
let the tiny VLM see objects? One setting per run:

    python bench/perception.py                                   # the shipped setting
    python bench/perception.py --scene '{"max_objects": 3, "object_size": 0.09}' --steps 300   # the old scenes
    python bench/perception.py --no-captions                     # QA warm-up without the caption rows

Caption pretraining on fresh scenes, QA warm-up on labelled clips, then on `--dev` dev clips (their own seed stream,
never a held-out clip of the experiment) per question kind: greedy exact match, pass@K at temperature 1, and pass@K
with another dev clip's frames (the gate of pipelines/stages/gate.py, here with transformers' generate on rendered frames
instead of vLLM on decoded H.264, so that a setting is measured in minutes without a cluster). Prints a table.
"""
from __future__ import annotations

import argparse
import json
import random
import time
from collections import defaultdict

import common  # noqa: F401  (puts the repository on sys.path)

DEV_STREAM = 7_003


def main() -> None:
    import torch

    from rlaif.headroom import gate_figures
    from rlaif.policy_model import load_policy
    from rlaif.testkit.tiny_models import ensure_model
    from rlaif.vlm_inputs import encode_prompt
    from rlaif.testkit.warm_models import (PERCEPTION_BATCH, PERCEPTION_LR, PERCEPTION_SCENE, PERCEPTION_STEPS, WARMUP_CLIPS,
                                   WARMUP_EPOCHS, WARMUP_LR, caption_pretrain, one_per_kind, qa_warmup, render_clip)
    from rlaif.testkit.synthetic_videos import questions_for

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scene", type=json.loads, default=PERCEPTION_SCENE, help="make_scene options (JSON)")
    ap.add_argument("--steps", type=int, default=PERCEPTION_STEPS, help="caption pretraining batches (0: none)")
    ap.add_argument("--batch", type=int, default=PERCEPTION_BATCH)
    ap.add_argument("--lr", type=float, default=PERCEPTION_LR)
    ap.add_argument("--warmup-clips", type=int, default=WARMUP_CLIPS)
    ap.add_argument("--warmup-epochs", type=int, default=WARMUP_EPOCHS)
    ap.add_argument("--warmup-lr", type=float, default=WARMUP_LR)
    ap.add_argument("--no-captions", action="store_true", help="QA warm-up without the caption rows")
    ap.add_argument("--dev", type=int, default=60, help="dev clips")
    ap.add_argument("-k", type=int, default=8)
    args = ap.parse_args()

    torch.set_num_threads(2)
    torch.manual_seed(0)
    model, processor = load_policy(ensure_model("tiny-qwen2-vl"))
    start = time.time()
    if args.steps:
        caption_pretrain(model, processor, args.steps, args.batch, args.lr, args.scene)
    pretrain_s = time.time() - start
    qa_warmup(model, processor, args.warmup_clips, args.warmup_epochs, args.warmup_lr, scene=args.scene,
              captions=not args.no_captions)
    warmup_s = time.time() - start - pretrain_s

    tok = processor.tokenizer

    @torch.no_grad()
    def answers(question, frames, k):
        enc = encode_prompt(processor, question, frames)
        kw = {"do_sample": False} if k == 1 else {"do_sample": True, "temperature": 1.0, "top_k": 0}
        out = model.generate(**enc, max_new_tokens=8, num_return_sequences=k, **kw)
        return [tok.decode(o[enc["input_ids"].shape[1]:], skip_special_tokens=True).strip() for o in out]

    dev = [render_clip(DEV_STREAM, i, args.scene) for i in range(args.dev)]
    rng = random.Random(0)
    kinds, refs = {}, {}
    got = defaultdict(dict)
    torch.manual_seed(1)
    for i, (truth, frames) in enumerate(dev):
        other = dev[(i + 1) % len(dev)][1]
        for q in one_per_kind(questions_for(truth), rng):
            qid = f"{i}-{q['kind']}"
            kinds[qid], refs[qid] = q["kind"], q["answer"]
            got["greedy"][qid] = answers(q["question"], frames, 1)
            got["sampled"][qid] = answers(q["question"], frames, args.k)
            got["other"][qid] = answers(q["question"], other, args.k)
    figures = gate_figures(kinds, refs, got["greedy"], got["sampled"], got["other"])
    print(f"\nscene {args.scene}; caption pretraining {args.steps} x {args.batch} at lr {args.lr} ({pretrain_s:.0f} s); "
          f"QA warm-up {args.warmup_clips} clips x {args.warmup_epochs} epochs at lr {args.warmup_lr}"
          f"{' without captions' if args.no_captions else ' with captions'} ({warmup_s:.0f} s); {args.dev} dev clips\n")
    print(f"| kind | n | greedy | pass@{args.k} | other-clip pass@{args.k} | grounded (p) |\n|---|---|---|---|---|---|")
    for kind, f in figures.items():
        print(f"| {kind} | {f['n']} | {f['greedy']:.2f} | {f['pass_at_k']:.2f} | {f['other_clip_pass_at_k']:.2f} | "
              f"{f['grounded']:+.2f} ({f['grounded_p']:.2g}) |")


if __name__ == "__main__":
    main()
