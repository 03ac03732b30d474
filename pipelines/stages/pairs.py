"""Pairs stage: best vs worst answer per prompt (rlaif.pairs), then the reference policy's log-probs of both, computed
once per round with transformers and stored with the pairs, so training holds no second model copy."""
from __future__ import annotations

import logging

import pyarrow as pa
import pyarrow.compute as pc
import ray.data
import torch

from actors.progress import expect
from rlaif.pairs import select_pairs
from rlaif.placement import reference_pool
from rlaif.policy_model import answer_logps, is_video_model, load_policy, pair_batch
from rlaif.schemas import PAIRS

from pipelines.stages.base import StageContext, stage
from pipelines.stages.io import row_count, write_dataset, write_table
from pipelines.stages.joins import Rows, joined, per_group, rows_with_frames, stored

log = logging.getLogger(__name__)
REFERENCE_BATCH = 8  # pairs per Ray Data batch to a reference actor (which scores them batch_pairs at a time)


class ReferenceLogps:
    """Ray Data actor holding the reference policy; adds ref_logp_chosen / ref_logp_rejected to pair rows.
    For IPO the log-probs are per-token means (length-normalised), else sums.

    By default each pair is scored in a forward of its own (its chosen and rejected answers together): a pair's
    log-probs then depend on the pair alone. Scored with other pairs, they change in the last bits with the batch's
    padding and shape, and which pairs share a Ray Data batch differs from run to run (blocks arrive in any order),
    so the same round would train on different numbers. `batch_pairs` > 1 is faster on a GPU and not reproducible."""

    def __init__(self, reference_path: str, average: bool, round_idx: int | None = None, batch_pairs: int = 1):
        self.round = {} if round_idx is None else {"round": round_idx}  # the pairs' round, unless they carry it
        self.model, self.processor = load_policy(reference_path)
        self.model.eval()
        self.video = is_video_model(reference_path)
        self.average = average
        self.batch_pairs = batch_pairs

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        chosen, rejected = [], []
        for i in range(0, len(rows), self.batch_pairs):
            part = rows[i: i + self.batch_pairs]
            with torch.no_grad():
                total, mean = answer_logps(self.model, pair_batch(self.processor, part, self.video))
            lp = (mean if self.average else total).tolist()
            chosen += lp[: len(part)]
            rejected += lp[len(part):]
        out = [{k: r.get(k) for k in PAIRS.names} | self.round | {"ref_logp_chosen": c, "ref_logp_rejected": j}
               for r, c, j in zip(rows, chosen, rejected)]
        return pa.Table.from_pylist(out, schema=PAIRS)


def selected_pairs(ctx: StageContext, judged_rows: int) -> Rows:
    """select_pairs on each prompt's judged answers (pipelines.stages.joins.per_group), with the prompt's video and
    question: the PAIRS columns but the round and the reference log-probs."""
    p = ctx.cfg.pairs
    judged = stored(ctx.out.judgments, ["prompt_id", "response", "score", "n_tokens", "finish_reason"], rows=judged_rows)
    selected = per_group(judged, "prompt_id", select_pairs, p.min_margin, p.max_length_ratio, p.truncated_chosen)
    prompts = stored(ctx.layout.prompts, ["prompt_id", "video_id", "question"])
    return joined(selected, prompts, "prompt_id")


@stage("pairs", "train.reference", "train.loss_type", "train.cpus_per_worker", "train.gpus_per_worker", "train.use_gpu")
def pairs(ctx: StageContext) -> dict:
    """round_<r>/pairs.parquet: best vs worst answer per question (rlaif.pairs), with the reference policy's
    log-probs of both (ctx.reference), computed here once, so training holds no second model copy. The pairs are
    in no particular order (the reference actors finish their batches in any order): training sorts its rows
    (train.training_rows)."""
    cfg, out = ctx.cfg, ctx.out
    judged_rows = row_count(out.judgments)
    n_selected = 0
    if judged_rows:
        selected = selected_pairs(ctx, judged_rows)
        selected = selected.executed()  # selected once, then counted and read by the reference actors
        n_selected = selected.count()
    if n_selected == 0:
        write_table(PAIRS.empty_table(), out.pairs)
    else:
        expect(n_selected)
        pool = reference_pool(cfg)
        # Each actor loads a policy copy: start no more than there are batches for, all at once (waiting for Ray
        # Data's autoscaler to add them one by one would leave the round's only work on one actor while the others
        # load), and give each one batch at a time, so that the first actor loaded does not queue the batches the
        # others would take.
        most = max(1, min(pool.max_size, -(-n_selected // REFERENCE_BATCH)))
        ds = rows_with_frames(ctx.layout.videos, selected).map_batches(
            ReferenceLogps, fn_constructor_kwargs={"reference_path": ctx.reference, "round_idx": ctx.round,
                                                   "average": cfg.train.loss_type == "ipo"},
            batch_size=REFERENCE_BATCH, batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=most, initial_size=most,
                                               max_tasks_in_flight_per_actor=1),
            num_cpus=pool.cpus, num_gpus=pool.gpus)
        write_dataset(ds, out.pairs, PAIRS)
    n = row_count(out.pairs)
    # Every training question is answered and judged (the rollout answers each K times).
    prompts_judged = row_count(ctx.layout.prompts, pc.field("split") == "train") if judged_rows else 0
    log.info("pairs: %d of %d prompts had a preference (margin >= %g)", n, prompts_judged, cfg.pairs.min_margin)
    return {"rows": n, "prompts": prompts_judged}
