"""The stage contract: every stage of the loop is a function of one `StageContext` that returns its counts (a dict,
recorded in manifest.json), and declares beside itself the config sections its output depends on (`@stage`).

    @stage("pairs", "train.loss_type")
    def pairs(ctx: StageContext) -> dict: ...

`pipelines.orchestration.resume.Stages` hashes those sections, together with every earlier stage's, into the stage's
resume key: a stage is redone on `--resume` when anything it or an earlier stage read from the config changed, and
`tests/unit/test_stage_contract.py` checks that every config section is read by some stage or is declared as not
affecting outputs, so a new section cannot be forgotten.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

from actors.pool import EnginePool
from rlaif.config import RunConfig
from rlaif.layout import RoundLayout, RunLayout
from rlaif.storage import RunPath

StageFn = Callable[["StageContext"], "dict | int"]


def stage(*depends: str) -> Callable[[StageFn], StageFn]:
    """Declares the config sections (or dotted keys) a stage's output depends on."""

    def declare(fn: StageFn) -> StageFn:
        fn.depends = depends
        return fn

    return declare


@dataclass(frozen=True)
class StageContext:
    """What a stage reads: the config, the run folder, the engine pools, and where in the loop it runs."""

    cfg: RunConfig
    layout: RunLayout
    pools: Mapping[str, EnginePool | None] = field(default_factory=dict)  # policy, judge, captioner, extra:<model>
    round: int = -1  # -1 before the rounds (round_base/); cfg.loop.rounds for rebirth
    policy: str | None = None  # folder of the policy this stage starts from (the engines hold it)
    start: str | None = None  # folder of the run's starting policy (rebirth's base; the LoRA's base without merging)
    reference: str | None = None  # folder of DPO's reference policy (train.reference: fixed -> start, else policy)
    adapter: str | None = None  # the previous round's LoRA adapter (train.merge_each_round false)
    evidence: RunPath | None = None  # the captions the judge reads this round (i-SRT: the round's re-descriptions)
    captioned_during_ingest: bool = False  # this run's ingest stream wrote the captions already
    source: str | list[str] | None = None  # what ingest reads (None: ingest.source)

    def at(self, **changes) -> StageContext:
        return replace(self, **changes)

    @property
    def out(self) -> RoundLayout:
        """The folder this round's stages write: round_base/, round_<r>/ or rebirth/."""
        return self.layout.rebirth if self.round >= self.cfg.loop.rounds else self.layout.round(self.round)

    @property
    def policy_pool(self) -> EnginePool:
        return self.pools["policy"]

    @property
    def judge_pool(self) -> EnginePool | None:
        return self.pools.get("judge")

    @property
    def captioner_pool(self) -> EnginePool | None:
        return self.pools.get("captioner")

    @property
    def responders(self) -> list[EnginePool]:
        """The policy pool and MMAIP-V's extra responders: the pools that answer in a rollout."""
        return [self.pools["policy"]] + [p for k, p in self.pools.items() if k.startswith("extra:")]
