"""Caption evaluation stage (video-SALMONN 2): the policy captions the held-out videos greedily, the judge checks
every fact of each video's reference caption against it, and the rates go into the round's eval.json.

    round_<r>/eval_captions.parquet   the policy's captions (CAPTIONS schema)
    round_<r>/caption_facts.parquet   one row per (video, reference fact): verdict covered | missing | contradicted
"""
from __future__ import annotations

import logging

import pyarrow as pa

from actors.pool import EngineClient
from actors.progress import expect
from rlaif.caption_eval import CaptionTally, caption_metrics, fact_rows, parse_verdict
from rlaif.prompts import FACT_CHECK_REGEX, fact_check_messages
from rlaif.schemas import CAPTION_FACTS

from pipelines.stages.base import StageContext
from pipelines.stages.caption import caption_videos, reference_captions, split_videos
from pipelines.stages.io import scan, write_dataset
from pipelines.stages.joins import joined, stored, transformed

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
    """Part of the eval stage (eval.caption_metrics): the caption figures of the round's eval.json. The held-out
    videos with a reference caption, the policy's captions and the facts to check flow as Rows (tasks or Ray Data);
    the driver adds up the verdicts and captions a batch at a time (CaptionTally)."""
    cfg, layout, out, judge = ctx.cfg, ctx.layout, ctx.out, ctx.judge_pool
    references = reference_captions(cfg, layout)
    held_out = None if references is None else joined(split_videos(layout, "eval"), references, "video_id").executed()
    if held_out is None or not held_out.count():
        log.warning("caption eval: no held-out video has a reference caption")
        return caption_metrics([], [])
    sampling = {"n": 1, "temperature": cfg.eval.caption_temperature, "max_tokens": cfg.eval.caption_max_tokens,
                "seed": cfg.seed}
    caption_videos(layout, ctx.policy_pool, sampling, out.eval_captions, held_out)
    facts = transformed(joined(stored(out.eval_captions, ["video_id", "caption"]), held_out, "video_id"),
                        fact_rows).executed()
    expect(facts.count())
    ds = judge.map_batches(facts.stream(), CheckFacts, structured=cfg.judge.structured, retries=cfg.judge.retries)
    write_dataset(ds, out.caption_facts, CAPTION_FACTS)
    tally = CaptionTally()
    for batch in scan(out.caption_facts, ["verdict"]):
        tally.add(verdicts=batch.column(0).to_pylist())
    for batch in scan(out.eval_captions, ["caption"]):
        tally.add(captions=batch.column(0).to_pylist())
    return tally.metrics()
