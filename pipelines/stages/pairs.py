"""Pairs stage: best vs worst answer per prompt (rlaif.pairs), then the reference policy's log-probs of both, computed
once per round with transformers and stored with the pairs, so training holds no second model copy.

    judgments.parquet → groupby(prompt_id) → select_pairs → ⋈ prompts → ⋈ frames → ReferenceLogps → sort → pairs.parquet

all in Ray Data: the driver sees counts only."""
from __future__ import annotations

import logging

import pyarrow as pa
import ray.data
import torch
from ray.data.aggregate import CountDistinct

from actors.progress import expect
from rlaif.pairs import select_pairs
from rlaif.placement import reference_pool
from rlaif.policy_model import answer_logps, is_video_model, load_policy, pair_batch
from rlaif.schemas import PAIRS

from pipelines.stages.base import StageContext, stage
from pipelines.stages.frames_join import join_partitions, rows_with_frames
from pipelines.stages.io import read_dataset, row_count, write_dataset, write_table

log = logging.getLogger(__name__)
REFERENCE_BATCH = 8  # pairs per Ray Data batch to a reference actor (which scores them batch_pairs at a time)


class ReferenceLogps:
    """Ray Data actor holding the reference policy; adds ref_logp_chosen / ref_logp_rejected to pair rows.
    For IPO the log-probs are per-token means (length-normalised), else sums."""

    def __init__(self, reference_path: str, average: bool, batch_pairs: int = 4):
        self.model, self.processor = load_policy(reference_path)
        self.model.eval()
        self.video = is_video_model(reference_path)
        self.average = average
        self.batch_pairs = batch_pairs

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()  # bounded: one Ray Data batch
        chosen, rejected = [], []
        for i in range(0, len(rows), self.batch_pairs):
            part = rows[i: i + self.batch_pairs]
            with torch.no_grad():
                total, mean = answer_logps(self.model, pair_batch(self.processor, part, self.video))
            lp = (mean if self.average else total).tolist()
            chosen += lp[: len(part)]
            rejected += lp[len(part):]
        out = [{k: r.get(k) for k in PAIRS.names} | {"ref_logp_chosen": c, "ref_logp_rejected": j}
               for r, c, j in zip(rows, chosen, rejected)]
        return pa.Table.from_pylist(out, schema=PAIRS)


def selected_pairs(ctx: StageContext, judged: ray.data.Dataset, judged_rows: int) -> ray.data.Dataset:
    """select_pairs on each prompt's judged answers (one Ray Data group per prompt), with the prompt's video and
    question and the round: the PAIRS columns but the reference log-probs."""
    p = ctx.cfg.pairs
    selected = judged.groupby("prompt_id").map_groups(
        select_pairs, fn_args=(p.min_margin, p.max_length_ratio, p.truncated_chosen), batch_format="pyarrow")
    prompts = read_dataset(ctx.layout.prompts, ["prompt_id", "video_id", "question"])
    round_idx = ctx.round  # (the column's function must not carry the context, which holds the pools)
    return selected.join(prompts, "inner", join_partitions(judged_rows), on=("prompt_id",)).add_column(
        "round", lambda batch: pa.array([round_idx] * batch.num_rows, pa.int32()), batch_format="pyarrow")


@stage("pairs", "train.reference", "train.loss_type", "train.cpus_per_worker", "train.gpus_per_worker", "train.use_gpu")
def pairs(ctx: StageContext) -> dict:
    """round_<r>/pairs.parquet: best vs worst answer per question (rlaif.pairs), with the reference policy's
    log-probs of both (ctx.reference), computed here once, so training holds no second model copy. The pairs are
    written in prompt_id order (a run's table does not depend on the pool's size or the joins' order)."""
    cfg, out = ctx.cfg, ctx.out
    judged_rows = row_count(out.judgments)
    judged = read_dataset(out.judgments, ["prompt_id", "response", "score", "n_tokens", "finish_reason"])
    # Materialised in the object store (a few text columns per prompt): counted here, then read by the reference
    # actors without selecting again.
    selected = selected_pairs(ctx, judged, judged_rows).materialize() if judged_rows else None
    n_selected = selected.count() if selected is not None else 0
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
        ds = rows_with_frames(ctx.layout.videos, selected, n_selected).map_batches(
            ReferenceLogps, fn_constructor_kwargs={"reference_path": ctx.reference,
                                                   "average": cfg.train.loss_type == "ipo"},
            batch_size=REFERENCE_BATCH, batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=most, initial_size=most,
                                               max_tasks_in_flight_per_actor=1),
            num_cpus=pool.cpus, num_gpus=pool.gpus)
        write_dataset(ds.sort("prompt_id"), out.pairs, PAIRS)
    n = row_count(out.pairs)
    prompts_judged = judged.aggregate(CountDistinct("prompt_id", alias_name="prompts"))["prompts"] if judged_rows else 0
    log.info("pairs: %d of %d prompts had a preference (margin >= %g)", n, prompts_judged, cfg.pairs.min_margin)
    return {"rows": n, "prompts": prompts_judged}
