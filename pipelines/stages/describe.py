"""i-SRT's self-retrospection stage: before a round's rollouts, the current policy re-describes each training video
given its previous description (round 0: the run's caption; later: the previous round's re-description). The new
description is that round's evidence for the judge (round_r/captions.parquet), so the evidence improves along with
the policy instead of staying the starting captioner's."""
from __future__ import annotations

from rlaif.layout import RunLayout
from rlaif.storage import RunPath

from pipelines.stages.base import StageContext, stage
from pipelines.stages.caption import caption_sampling, caption_videos, split_videos
from pipelines.stages.joins import joined, stored


def previous_descriptions(layout: RunLayout, round_idx: int) -> RunPath:
    earlier = layout.round(round_idx - 1).captions
    return earlier if round_idx > 0 and earlier.exists() else layout.captions


@stage("caption")
def describe(ctx: StageContext) -> dict:
    """round_<r>/captions.parquet: the policy's re-descriptions of the training videos, the round's evidence."""
    source = previous_descriptions(ctx.layout, ctx.round)
    previous = joined(split_videos(ctx.layout, "train"), stored(source, ["video_id", "caption"]), "video_id")
    n = caption_videos(ctx.layout, ctx.policy_pool, caption_sampling(ctx.cfg), ctx.out.captions, previous,
                       retrospect=True)
    return {"rows": n, "previous": source.relative_to(ctx.layout.dir).as_posix()}
