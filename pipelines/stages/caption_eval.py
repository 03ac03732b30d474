"""Caption evaluation stage (video-SALMONN 2): the policy captions the held-out videos greedily, the judge checks
every fact of each video's reference caption against it, and the rates go into the round's eval.json.

    round_<r>/eval_captions.parquet   the policy's captions (CAPTIONS schema)
    round_<r>/caption_facts.parquet   one row per (video, reference fact): verdict covered | missing | contradicted
"""
from __future__ import annotations

import logging

import pyarrow as pa
import pyarrow.compute as pc
import ray.data

from actors.pool import EngineClient
from actors.progress import expect
from rlaif.caption_eval import caption_metrics, parse_verdict, reference_facts
from rlaif.prompts import FACT_CHECK_REGEX, fact_check_messages
from rlaif.schemas import CAPTION_FACTS

from pipelines.stages.base import StageContext
from pipelines.stages.caption import caption_videos, reference_captions
from pipelines.stages.io import read_table, write_dataset

log = logging.getLogger(__name__)


class CheckFacts(EngineClient):
    def __init__(self, engines: list, structured: bool, retries: int):
        super().__init__(engines)
        self.structured, self.retries = structured, retries

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        # Room for the longest verdict in any tokenizer (the tiny test tokenizer spends a token per few bytes).
        sampling = {"max_tokens": 32, "temperature": 0.0}
        if self.structured:
            sampling["regex"] = FACT_CHECK_REGEX
        # A caption with no words states nothing: each of its facts is missing, with no judge to get that wrong.
        ask = [i for i, r in enumerate(rows) if r["caption"].strip()]
        verdicts: list[str | None] = ["missing"] * len(rows)
        if ask:
            requests = [{"messages": fact_check_messages(rows[i]["caption"], rows[i]["fact"])} for i in ask]
            answers, _ = self.call_parsed(requests, sampling, parse_verdict, lambda v: v is not None, self.retries)
            for i, verdict in zip(ask, answers):
                verdicts[i] = verdict
        return pa.Table.from_pylist([{"video_id": r["video_id"], "fact_idx": r["fact_idx"], "fact": r["fact"],
                                      "verdict": v, "parse_ok": v is not None} for r, v in zip(rows, verdicts)],
                                    schema=CAPTION_FACTS)


def caption_eval(ctx: StageContext) -> dict:
    """Part of the eval stage (eval.caption_metrics): the caption figures of the round's eval.json."""
    cfg, layout, out, judge = ctx.cfg, ctx.layout, ctx.out, ctx.judge_pool
    prompts = read_table(layout.prompts, ["video_id", "split"])
    held_out = set(prompts.filter(pc.equal(prompts.column("split"), "eval")).column("video_id").to_pylist())
    references = {v: c for v, c in reference_captions(cfg, layout).items() if v in held_out}
    if not references:
        log.warning("caption eval: no held-out video has a reference caption")
        return caption_metrics([], [])
    sampling = {"n": 1, "temperature": cfg.eval.caption_temperature, "max_tokens": cfg.eval.caption_max_tokens,
                "seed": cfg.seed}
    caption_videos(layout, ctx.policy_pool, sampling, out.eval_captions, sorted(references))
    captions = dict(zip(*read_table(out.eval_captions, ["video_id", "caption"]).to_pydict().values()))
    facts = [{"video_id": v, "fact_idx": i, "fact": fact, "caption": captions[v]}
             for v in sorted(captions) for i, fact in enumerate(reference_facts(references[v]))]
    expect(len(facts))
    ds = judge.map_batches(ray.data.from_items(facts), CheckFacts, structured=cfg.judge.structured,
                           retries=cfg.judge.retries)
    write_dataset(ds, out.caption_facts, CAPTION_FACTS)
    verdicts = read_table(out.caption_facts, ["verdict"]).column("verdict").to_pylist()
    return caption_metrics(verdicts, [captions[v] for v in sorted(captions)])
