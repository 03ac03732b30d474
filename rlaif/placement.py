"""The placement plan of a run: which Ray actors it asks for (engine pools, trainer workers, serve replicas are
separate), with how many CPUs and GPUs each, and whether they fit a given cluster, packed the way Ray's scheduler
would (first fit, largest first). `rlaif plan CONFIG --nodes 1 --gpus-per-node 8` prints it without starting
anything, so GPU configs can be checked on a laptop.

Engine pools are started once and held for the whole run, and the trainer workers join them during the train stage:
everything must fit at the same time. Pools and trainer share GPUs when their fractions say so (e.g. an engine with
`num_gpus: 0.4` and `gpu_memory_utilization: 0.35` beside a trainer worker with `gpus_per_worker: 0.6`).

Which engine pools a run holds is `plan_pools`, read both here (`rlaif plan`) and by the run itself
(pipelines.orchestration.pools.EnginePools), and an engine's GPUs are `engine_gpus`, also what EnginePool asks Ray
for: a dry run and a run cannot disagree (tests/unit/test_plan_agrees.py checks every shipped config).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from rlaif.config import POLICY_AS_JUDGE, EnginePoolConfig, IngestConfig, RunConfig

EPS = 1e-9


@dataclass(frozen=True)
class Actor:
    component: str  # e.g. "policy pool", "trainer"
    index: int
    cpus: float
    gpus: float  # GPUs of one actor (an engine with tensor parallelism holds tensor_parallel_size x num_gpus)
    model: str = ""  # the model it holds (engines, trainer workers)


@dataclass
class Node:
    name: str
    cpus: float
    gpus: float
    actors: list[Actor] = field(default_factory=list)
    gpu_slots: list[float] = field(default_factory=list)  # free fraction of each GPU

    def __post_init__(self):
        self.gpu_slots = [1.0] * int(self.gpus)

    @property
    def free_cpus(self) -> float:
        return self.cpus - sum(a.cpus for a in self.actors)

    def place(self, actor: Actor) -> bool:
        """Whole GPUs for gpus >= 1 (as Ray gives them), one shared GPU for a fraction."""
        if actor.cpus > self.free_cpus + EPS:
            return False
        if actor.gpus >= 1:
            need = int(round(actor.gpus))
            whole = [i for i, free in enumerate(self.gpu_slots) if free >= 1 - EPS]
            if len(whole) < need:
                return False
            for i in whole[:need]:
                self.gpu_slots[i] = 0.0
        elif actor.gpus > 0:
            fits = [i for i, free in enumerate(self.gpu_slots) if free >= actor.gpus - EPS]
            if not fits:
                return False
            best = min(fits, key=lambda i: self.gpu_slots[i])  # fill shared GPUs first
            self.gpu_slots[best] -= actor.gpus
        self.actors.append(actor)
        return True


def engine_gpus(cfg: EnginePoolConfig) -> float:
    """GPUs of one engine of a pool: num_gpus per tensor-parallel worker x tensor_parallel_size (Ray gives the engine
    actor all of them). The one place this is worked out: EnginePool asks Ray for it, the plan packs it."""
    return cfg.num_gpus * cfg.tensor_parallel_size


@dataclass(frozen=True)
class PoolPlan:
    """One engine pool of a run, as EnginePool starts it (the policy pool also gets its run folder's weights_state
    when it starts: that is not part of the plan, which a config alone decides)."""

    role: str  # policy, judge, captioner, extra<i>
    model: str
    cfg: EnginePoolConfig
    video: bool
    seed: int
    adapter_rank: int | None = None
    shared_weights: bool = False  # the engines keep their parameters in shared memory (loop.sync_transport)

    @property
    def engine_gpus(self) -> float:
        return engine_gpus(self.cfg)

    @property
    def cpus(self) -> float:
        """Ray CPUs the whole pool holds."""
        return self.cfg.num_cpus * self.cfg.replicas


def plan_pools(cfg: RunConfig) -> dict[str, PoolPlan | str | None]:
    """The engine pools a run of `cfg` holds, by the name the loop uses: policy, judge, captioner, and one per extra
    responder (extra:<model>). A name whose value is a str serves with that other pool (the policy judges, i-SRT, or
    captions); None: no pool (no LLM judges). Both `rlaif run` (pipelines.orchestration.pools.EnginePools) and
    `rlaif plan` (run_actors) read this."""
    plans: dict[str, PoolPlan | str | None] = {
        "policy": PoolPlan("policy", cfg.models.policy, cfg.pools.policy, True, cfg.seed,
                           adapter_rank=cfg.train.lora_r if cfg.loop.sync == "adapter" else None,
                           shared_weights=cfg.loop.sync_transport == "shared_memory")}
    if cfg.models.judge == POLICY_AS_JUDGE:
        plans["judge"] = "policy"  # i-SRT: the policy judges with its current weights
    elif cfg.needs_judge_engine():
        plans["judge"] = PoolPlan("judge", cfg.models.judge, cfg.pools.judge, False, cfg.seed)
    else:
        plans["judge"] = None  # an external scorer judges, and no LLM writes questions or checks captions
    captioner = cfg.models.captioner or cfg.models.policy
    if cfg.caption.source == "model" and (captioner != cfg.models.policy or cfg.pools.captioner is not None):
        plans["captioner"] = PoolPlan("captioner", captioner, cfg.pools.captioner or cfg.pools.policy, True, cfg.seed)
    else:
        plans["captioner"] = "policy"  # captions come before any training: the starting policy writes them
    for i, model in enumerate(cfg.models.extra_responders):
        plans[f"extra:{model}"] = PoolPlan(f"extra{i}", model, cfg.pools.extra, True, cfg.seed + 100 * (i + 1))
    return plans


def started_pools(plans: dict[str, PoolPlan | str | None]) -> list[PoolPlan]:
    """The pools actually started: each once (the aliases and the None entries start nothing)."""
    return [p for p in plans.values() if isinstance(p, PoolPlan)]


def pool_actors(plans: dict[str, PoolPlan | str | None]) -> list[Actor]:
    """One Actor per engine of each started pool."""
    return [Actor(f"{p.role} pool", i, p.cfg.num_cpus, p.engine_gpus, p.model)
            for p in started_pools(plans) for i in range(p.cfg.replicas)]


def run_actors(cfg: RunConfig) -> list[Actor]:
    """Every long-lived actor of a run (the engine pools of plan_pools) plus the trainer workers of a round."""
    t = cfg.train
    return pool_actors(plan_pools(cfg)) + [
        Actor("trainer", i, t.cpus_per_worker, t.gpus_per_worker if t.use_gpu else 0.0, cfg.models.policy)
        for i in range(t.workers)]


@dataclass(frozen=True)
class TransientPool:
    """A Ray Data actor pool that lives for one stage (autoscaling from `min_size` to `max_size` actors, None: as
    many as the free resources allow). The stage that starts it reads its size and resources from here, as
    `rlaif plan` does."""

    name: str
    min_size: int
    max_size: int | None
    cpus: float
    gpus: float
    when: str  # the stage it runs in, and whose resources it uses

    @property
    def size(self) -> str:
        return f"{self.min_size}..{self.max_size if self.max_size is not None else 'free CPUs'}"


def decoder_pool(cfg: IngestConfig) -> TransientPool:
    """Ingest's decode actors (ingest.decoders): one CPU each, a decode keeping one core busy."""
    return TransientPool("ingest decoders", 1, cfg.decoders, 1.0, 0.0, "ingest, beside the starting engines")


# A Ray Data stage that sends batches to a pool of workers (ingest's decoders, the rollout's engines) runs at most
# max(MIN_TASKS, TASKS_PER_WORKER x workers) tasks, whatever the number of rows: the driver holds ~17-45 KB per
# task while the stage runs (Ray Data's executor and Ray's core worker; docs/scale.md), so a task count that grew
# with the rows made the driver's memory grow with them. Four tasks per worker still balance the load: the last
# tasks to finish hold a quarter of a worker's share at most.
MIN_TASKS = 64
TASKS_PER_WORKER = 4


def task_rows(n_rows: int, batch_size: int, workers: int) -> int:
    """Rows per task of such a stage: `batch_size` (a task per batch), or a multiple of it when there are more
    batches than tasks allowed (above). The workers are still sent `batch_size` rows at a time."""
    batches = -(-n_rows // batch_size)
    max_tasks = max(MIN_TASKS, TASKS_PER_WORKER * workers)
    return max(1, -(-batches // max_tasks)) * batch_size


def reference_pool(cfg: RunConfig) -> TransientPool:
    """The pairs stage's reference log-prob actors: by default the trainer's workers and resources, idle then."""
    ref, t = cfg.pools.reference, cfg.train
    default_gpus = t.gpus_per_worker if t.use_gpu else 0.0
    return TransientPool("reference log-probs", 1, ref.actors or t.workers,
                         ref.num_cpus if ref.num_cpus is not None else t.cpus_per_worker,
                         ref.num_gpus if ref.num_gpus is not None else default_gpus,
                         "pairs stage, on the idle trainer's resources")


def scorer_pool(cfg: RunConfig) -> TransientPool | None:
    """judge.kind function: the scoring function's actors (None for an LLM judge)."""
    if cfg.judge.kind != "function":
        return None
    sc = cfg.pools.scorer
    return TransientPool("function judge", 1, sc.actors, sc.num_cpus if sc.num_cpus is not None else 0.5,
                         sc.num_gpus or 0.0, "judge stage, beside the engines")


def transient_pools(cfg: RunConfig) -> list[TransientPool]:
    return [p for p in (decoder_pool(cfg.ingest), reference_pool(cfg), scorer_pool(cfg)) if p is not None]


def fits_beside_engines(cfg: RunConfig, pool: TransientPool, plan: Plan) -> bool:
    """Whether `pool` at its largest fits on the plan's nodes beside the engine pools (held for the whole run). A
    pool that may grow to the free CPUs fits by definition, from one actor."""
    n = pool.max_size or 1
    nodes = plan.nodes
    actors = pool_actors(plan_pools(cfg)) + [Actor(pool.name, i, pool.cpus, pool.gpus) for i in range(n)]
    return pack(actors, len(nodes), nodes[0].cpus if nodes else 0, int(nodes[0].gpus) if nodes else 0).fits


@dataclass
class Plan:
    nodes: list[Node]
    unplaced: list[Actor]

    @property
    def fits(self) -> bool:
        return not self.unplaced


def pack(actors: list[Actor], nodes: int, cpus_per_node: float, gpus_per_node: int) -> Plan:
    cluster = [Node(f"node{i}", cpus_per_node, gpus_per_node) for i in range(nodes)]
    unplaced = []
    for actor in sorted(actors, key=lambda a: (-a.gpus, -a.cpus)):
        if not any(node.place(actor) for node in cluster):
            unplaced.append(actor)
    return Plan(cluster, unplaced)


def describe(cfg: RunConfig, plan: Plan) -> str:
    """The plan as text: per component, per node, and totals."""
    actors = [a for n in plan.nodes for a in n.actors] + plan.unplaced
    lines = ["| component | actors | CPUs each | GPUs each | model |", "|---|---|---|---|---|"]
    seen: dict[str, list[Actor]] = {}
    for a in actors:
        seen.setdefault(a.component, []).append(a)
    for name, group in seen.items():
        lines.append(f"| {name} | {len(group)} | {group[0].cpus:g} | {group[0].gpus:g} | {group[0].model} |")
    lines += ["", "| node | CPUs used | GPUs used | actors |", "|---|---|---|---|"]
    for n in plan.nodes:
        used_gpus = sum(1 - free for free in n.gpu_slots)
        names = ", ".join(f"{a.component}#{a.index}" for a in n.actors) or "-"
        lines.append(f"| {n.name} | {n.cpus - n.free_cpus:g}/{n.cpus:g} | {used_gpus:g}/{n.gpus:g} | {names} |")
    total_gpus = sum(a.gpus for a in actors)
    lines.append("")
    lines.append(f"total: {len(actors)} actors, {sum(a.cpus for a in actors):g} CPUs, {total_gpus:g} GPUs; "
                 f"ZeRO-{cfg.train.zero_stage}, {cfg.train.workers} trainer worker(s)")
    lines += ["", "| transient pool (one stage) | actors | CPUs each | GPUs each | when | fits beside the engines |",
              "|---|---|---|---|---|---|"]
    for p in transient_pools(cfg):
        fits = "yes" if fits_beside_engines(cfg, p, plan) else "NO"
        lines.append(f"| {p.name} | {p.size} | {p.cpus:g} | {p.gpus:g} | {p.when} | {fits} |")
    lines.append("")
    lines.append("fits" if plan.fits else "DOES NOT FIT: " + ", ".join(f"{a.component}#{a.index} "
                                                                       f"({a.cpus:g} CPU, {a.gpus:g} GPU)"
                                                                       for a in plan.unplaced))
    return "\n".join(lines)
