"""The placement plan of a run: which Ray actors it asks for (engine pools, trainer workers, serve replicas are
separate), with how many CPUs and GPUs each, and whether they fit a given cluster, packed the way Ray's scheduler
would (first fit, largest first). `rlaif plan CONFIG --nodes 1 --gpus-per-node 8` prints it without starting
anything, so GPU configs can be checked on a laptop.

Engine pools are started once and held for the whole run, and the trainer workers join them during the train stage:
everything must fit at the same time. Pools and trainer share GPUs when their fractions say so (e.g. an engine with
`num_gpus: 0.4` and `gpu_memory_utilization: 0.35` beside a trainer worker with `gpus_per_worker: 0.6`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from rlaif.config import EnginePoolConfig, RunConfig

EPS = 1e-9


@dataclass(frozen=True)
class Actor:
    component: str  # e.g. "policy pool", "trainer"
    index: int
    cpus: float
    gpus: float  # GPUs of one actor (an engine with tensor parallelism holds tensor_parallel_size x num_gpus)


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


def _pool(name: str, cfg: EnginePoolConfig) -> list[Actor]:
    gpus = cfg.num_gpus * cfg.tensor_parallel_size
    return [Actor(f"{name} pool", i, cfg.num_cpus, gpus) for i in range(cfg.replicas)]


def run_actors(cfg: RunConfig) -> list[Actor]:
    """Every long-lived actor of a run (the engine pools) plus the trainer workers of a round."""
    actors = _pool("policy", cfg.pools.policy)
    if cfg.needs_judge_engine():
        actors += _pool("judge", cfg.pools.judge)
    captioner = cfg.models.captioner or cfg.models.policy
    if cfg.caption.source == "model" and (captioner != cfg.models.policy or cfg.pools.captioner is not None):
        actors += _pool("captioner", cfg.pools.captioner or cfg.pools.policy)
    for i, _ in enumerate(cfg.models.extra_responders):
        actors += _pool(f"extra{i}", cfg.pools.extra)
    t = cfg.train
    actors += [Actor("trainer", i, t.cpus_per_worker, t.gpus_per_worker if t.use_gpu else 0.0) for i in range(t.workers)]
    return actors


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
    models = {"policy pool": cfg.models.policy, "judge pool": cfg.models.judge,
              "captioner pool": cfg.models.captioner or cfg.models.policy, "trainer": cfg.models.policy}
    models.update({f"extra{i} pool": m for i, m in enumerate(cfg.models.extra_responders)})
    seen: dict[str, list[Actor]] = {}
    for a in actors:
        seen.setdefault(a.component, []).append(a)
    for name, group in seen.items():
        lines.append(f"| {name} | {len(group)} | {group[0].cpus:g} | {group[0].gpus:g} | {models.get(name, '')} |")
    lines += ["", "| node | CPUs used | GPUs used | actors |", "|---|---|---|---|"]
    for n in plan.nodes:
        used_gpus = sum(1 - free for free in n.gpu_slots)
        names = ", ".join(f"{a.component}#{a.index}" for a in n.actors) or "-"
        lines.append(f"| {n.name} | {n.cpus - n.free_cpus:g}/{n.cpus:g} | {used_gpus:g}/{n.gpus:g} | {names} |")
    total_gpus = sum(a.gpus for a in actors)
    lines.append("")
    lines.append(f"total: {len(actors)} actors, {sum(a.cpus for a in actors):g} CPUs, {total_gpus:g} GPUs; "
                 f"ZeRO-{cfg.train.zero_stage}, {cfg.train.workers} trainer worker(s)")
    ref_gpus = cfg.train.gpus_per_worker if cfg.train.use_gpu else 0
    lines.append(f"transient, not packed: {cfg.ingest.decoders} ingest decoder(s) (before the engines start), "
                 f"1 reference log-prob actor ({cfg.train.cpus_per_worker:g} CPU, {ref_gpus:g} GPU; in the pairs "
                 f"stage, on the trainer's resources)")
    lines.append("fits" if plan.fits else "DOES NOT FIT: " + ", ".join(f"{a.component}#{a.index} "
                                                                       f"({a.cpus:g} CPU, {a.gpus:g} GPU)"
                                                                       for a in plan.unplaced))
    return "\n".join(lines)
