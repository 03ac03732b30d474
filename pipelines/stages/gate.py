"""The grounded-headroom gate (rlaif.headroom), run before any round on the experiment's labelled dev clips.

The warm policy, in a vLLM policy pool, answers every dev question three ways through the rollout stage's own
Ray Data path (pipelines.stages.rollout.prompt_answers): greedily, K times at the rollout temperature, and K times with
another dev clip's frames in view. Writes warmup/gate/ (rlaif.layout.GateLayout); returns the figures per kind,
with the prior-only baseline on the same questions.
"""
from __future__ import annotations

import logging

import pyarrow as pa
import pyarrow.parquet as pq

from actors.pool import EnginePool
from rlaif.config import RunConfig
from rlaif.headroom import gate_figures, prior_baseline
from rlaif.layout import RunLayout, SeedLayout
from rlaif.schemas import ROLLOUTS
from rlaif.storage import RunPath

from pipelines.stages.io import read_table, write_dataset

log = logging.getLogger(__name__)


def dev_prompts(warm: RunLayout, dev_file: RunPath) -> list[dict]:
    """The dev questions as prompts (prompt_id, video_id, question, reference_answer, kind) of ingested clips."""
    ids = dict(zip(*read_table(warm.videos, ["uri", "video_id"]).to_pydict().values()))
    rows = [r for r in pq.read_table(str(dev_file)).to_pylist() if r["uri"] in ids]
    return [{"prompt_id": f"dev{i}", "video_id": ids[r["uri"]], "question": r["question"],
             "reference_answer": r["reference_answer"], "kind": r["kind"]} for i, r in enumerate(rows)]


def with_other_clips(prompts: list[dict]) -> list[dict]:
    """The same prompts with the next dev clip's video in view (clips in order of first appearance, cyclically)."""
    videos = list(dict.fromkeys(p["video_id"] for p in prompts))
    if len(videos) < 2:
        raise ValueError("the gate needs at least two dev clips")
    nxt = {v: videos[(i + 1) % len(videos)] for i, v in enumerate(videos)}
    return [{**p, "video_id": nxt[p["video_id"]]} for p in prompts]


def run_gate(cfg: RunConfig, seed: SeedLayout, policy: str) -> dict:
    """The gate of one experiment seed, for the warm policy in folder `policy`."""
    from pipelines.stages.rollout import prompt_answers

    out = seed.gate
    out.dir.mkdir()
    prompts = dev_prompts(seed.warmup, seed.inputs.dev)
    k = cfg.experiment.gate_samples
    sampled = {"n": k, "temperature": cfg.rollout.temperature, "top_p": cfg.rollout.top_p,
               "max_tokens": cfg.rollout.max_tokens}
    runs = {"greedy": (prompts, {"n": 1, "temperature": 0.0, "max_tokens": cfg.loop.eval_max_tokens}),
            "sampled": (prompts, sampled), "other_clip": (with_other_clips(prompts), sampled)}
    pool = EnginePool("gate", policy, cfg.pools.policy, video=True, seed=cfg.seed)
    answers = {}
    try:
        for name, (rows, sampling) in runs.items():
            table = pa.Table.from_pylist([{k_: r[k_] for k_ in ("prompt_id", "video_id", "question")} for r in rows])
            path = getattr(out, name)
            write_dataset(prompt_answers(seed.warmup, pool, table, sampling, -1), path, ROLLOUTS)
            answers[name] = {}
            for r in read_table(path, ["prompt_id", "response"]).to_pylist():
                answers[name].setdefault(r["prompt_id"], []).append(r["response"])
    finally:
        pool.shutdown()
    kinds = {p["prompt_id"]: p["kind"] for p in prompts}
    references = {p["prompt_id"]: p["reference_answer"] for p in prompts}
    warmup = pq.read_table(str(seed.inputs.warmup)).to_pylist()  # the prior-only baseline's labels
    figures = {"k": k, "temperature": cfg.rollout.temperature, "dev_questions": len(prompts),
               "by_kind": gate_figures(kinds, references, answers["greedy"], answers["sampled"], answers["other_clip"]),
               "prior_only": prior_baseline(prompts, warmup)}
    out.figures.write_json(figures)
    for kind, f in figures["by_kind"].items():
        log.info("gate %-10s n=%3d greedy %.2f pass@%d %.2f other-clip pass@%d %.2f (p %.2g)", kind, f["n"],
                 f["greedy"], k, f["pass_at_k"], k, f["other_clip_pass_at_k"], f["grounded_p"])
    return figures
