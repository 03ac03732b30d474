"""The shared-memory transport of weight sync (loop.sync_transport shared_memory): one copy of the weights a sync.

The object store copies the weights twice (the sender's `ray.put`, then the engine's load out of the store), so a
sync costs at least twice the copy bound. Here an engine on the plain CPU kernel (pools.*.cpu_gemm torch, whose
linear layers run on their parameters as loaded) keeps its parameters in one shared-memory file (`share_parameters`,
a memfd: it goes when the engine's process does), and a sender on the same node writes each new tensor straight into
the parameter it belongs to (`write_weights`): the only copy. The CPU counterpart of vLLM's `ipc` engine, where the
engine reads the trainer's GPU memory through CUDA IPC handles.

Where each checkpoint tensor lands is learnt from vLLM's own loader, not written down per model (`learn_layout`):
the engine loads its starting weights once more through `model.load_weights` under a torch function mode that
records every write into the shared file. A tensor whose bytes are copied as they are (a fused qkv or gate_up
parameter takes q, k and v as row blocks, each a contiguous byte range) gets its offsets; a loader that transforms a
tensor (a cast, a transpose, a shard of a tensor-parallel engine) makes the layout unusable, and so does a parameter
left without a tensor, so the engine cannot be synced this way and says why (`SharedWeights.refusal`).

A sync (`sync_engines`, the sender; `WeightSyncEngine.begin_shared_write` / `end_shared_write`, the engine): the engine
marks its weights as being written (it refuses to generate, and its label no longer names a policy, so
`EnginePool.hold` resends the policy if the sender dies midway), the sender copies, then the engine drops everything
computed with the old weights and takes the new label. Engines on another node, or that refused, are synced through
the object store in the same call (stats: `sync_fallback`).
"""
from __future__ import annotations

import mmap
import os
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import torch
from torch.overrides import TorchFunctionMode

ALIGN = 64  # bytes: every parameter starts on a cache line


@dataclass
class Layout:
    """Where each checkpoint tensor's bytes live in an engine's shared parameter file. Names are keyed as the model's
    own `hf_to_vllm_mapper` maps them (`key`), so that a sender may use either of the names transformers gives a
    tensor (Qwen2-VL's `model.layers.0...` on disk, `model.language_model.layers.0...` in a live model's state dict)."""
    offsets: dict[str, list[int]]  # key -> byte offsets its tensor is copied to (a tied tensor may have several)
    nbytes: dict[str, int]  # key -> its size in bytes
    dtypes: dict[str, torch.dtype]  # key -> the dtype its bytes are read as (a sender must match it)
    mapper: object = None  # the model's vLLM WeightsMapper, or None; kept in the engine (see `for_sender`)
    keys: dict[str, str | None] | None = None  # a sender's names -> their keys, worked out by the engine

    def for_sender(self, names: list[str]) -> "Layout":
        """This layout as a sender gets it: its names' keys worked out here, without the mapper (unpickling a vLLM
        class would import vLLM into the sender's process, a Ray Train worker: ~1.7 s a sync)."""
        return Layout(self.offsets, self.nbytes, self.dtypes, keys={n: self.key(n) for n in names})

    def key(self, name: str) -> str | None:
        if self.keys is not None:
            return self.keys.get(name)
        if self.mapper is None:
            return name
        # A stacked rule (Llama's gate_proj and up_proj -> gate_up_proj) maps two names to one: the shard tells
        # them apart. Without the shard (another vLLM), the collision makes learn_layout refuse, never mix them up.
        with_shard = getattr(self.mapper, "_map_name_with_shard", None)
        if with_shard is None:
            return self.mapper.map_name(name)
        mapped = with_shard(name)
        return None if mapped is None else mapped[0] if mapped[1] is None else f"{mapped[0]}#{mapped[1]}"


@dataclass
class SharedWeights:
    """An engine's parameters in one shared-memory file, and the layout its loader gave them. Lives in the vLLM
    worker (`share_parameters`); `target(names)` is what a sender of those names needs to open it."""
    fd: int  # the memfd, open for as long as the engine lives: a sender opens /proc/<pid>/fd/<fd>
    region: torch.Tensor  # uint8, the whole file, mapped shared
    size: int
    layout: Layout | None = None
    refusal: str | None = None  # why a sync cannot write here (then the object store syncs this engine)

    def target(self, names: list[str]) -> dict:
        """`names`: the sender's tensor names (their keys come with the layout, see Layout.for_sender)."""
        layout = self.layout.for_sender(names) if self.layout is not None else None
        return {"pid": os.getpid(), "fd": self.fd, "size": self.size, "layout": layout, "refusal": self.refusal}


def share_parameters(model: torch.nn.Module) -> SharedWeights:
    """Moves every parameter of `model` into one shared-memory file (a copy, once; the old memory is freed), each at
    a 64-byte-aligned offset, as a contiguous tensor of the same dtype and shape."""
    params = list(dict.fromkeys(model.parameters()))  # a tied parameter once
    bad = [n for n, p in model.named_parameters() if p.is_meta or not p.is_contiguous() or p.device.type != "cpu"]
    if bad:
        raise ValueError(f"shared weights need contiguous CPU parameters; not so: {bad[:5]}")
    offsets, size = [], 0
    for p in params:
        offsets.append(size)
        size += -(-p.nbytes // ALIGN) * ALIGN
    fd = os.memfd_create("rlaif-weights")
    os.ftruncate(fd, max(size, 1))
    region = torch.from_file(f"/proc/self/fd/{fd}", shared=True, size=max(size, 1), dtype=torch.uint8)
    with torch.no_grad():
        for p, off in zip(params, offsets):
            view = region[off:off + p.nbytes].view(p.dtype).view(p.shape)
            view.copy_(p.data)
            p.data = view
    return SharedWeights(fd=fd, region=region, size=size)


class _WriteRecorder(TorchFunctionMode):
    """Records, while a model loads, each in-place write into the shared region: a whole source tensor copied as
    it is (`exact`: name -> (offset, nbytes)), a constant fill (`constant`: vLLM zeroes an embedding's padding rows,
    the same on every load), or anything else (`other`: what it was)."""

    def __init__(self, base: int, size: int, sources: dict[int, tuple[str, torch.Tensor]]):
        super().__init__()
        self.base, self.size, self.sources = base, size, sources
        self.exact: dict[str, list[tuple[int, int]]] = {}
        self.constant: list[tuple[int, int]] = []
        self.other: list[str] = []

    def _inside(self, t) -> bool:
        return isinstance(t, torch.Tensor) and self.base <= t.data_ptr() < self.base + self.size

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        in_place = name == "__setitem__" or (name.endswith("_") and not name.startswith("__"))  # copy_, fill_, ...
        if args and in_place and self._inside(args[0]):
            dst, rest = args[0], args[1:]
            at = (dst.data_ptr() - self.base, dst.nbytes)
            src = rest[0] if name == "copy_" and rest else None
            origin = self.sources.get(src.data_ptr()) if isinstance(src, torch.Tensor) else None
            if (origin is not None and src.numel() == origin[1].numel() and src.is_contiguous()
                    and dst.is_contiguous() and src.dtype == dst.dtype):
                self.exact.setdefault(origin[0], []).append(at)
            elif name in ("fill_", "zero_") and dst.is_contiguous() and not any(isinstance(a, torch.Tensor)
                                                                                for a in rest):
                self.constant.append(at)
            else:
                what = origin[0] if origin else "a tensor not loaded as it is"
                self.other.append(f"{name} of {what} into a {tuple(dst.shape)} {dst.dtype} parameter")
        return func(*args, **(kwargs or {}))


def exact_cover(writes: list[tuple[int, int]], params: list[tuple[int, int]]) -> str | None:
    """None if the (offset, nbytes) `writes` cover the `params` ranges exactly once (no gap, no overlap, nothing
    outside), else what is wrong."""
    ends = dict(params)
    writes, params = sorted(writes), sorted(params)
    for (a, n), (b, _) in zip(writes, writes[1:]):
        if a + n > b:
            return f"two writes overlap at byte {b}"
    pi = 0
    for off, n in writes:
        while pi < len(params) and params[pi][0] + params[pi][1] <= off:
            pi += 1
        if pi == len(params) or not params[pi][0] <= off <= off + n <= params[pi][0] + ends[params[pi][0]]:
            return f"a write at byte {off} is not inside one parameter"
    missing = sum(n for _, n in params) - sum(n for _, n in writes)
    return f"{missing} parameter bytes are never written" if missing else None


def learn_layout(shared: SharedWeights, params: list[tuple[int, int]], load: Callable[[Iterator], object],
                 weights: Iterable[tuple[str, torch.Tensor]], mapper: object = None) -> SharedWeights:
    """Loads `weights` by `load` (the model's `load_weights`) while recording where each lands, and sets the layout,
    or the refusal that says why a sync cannot write in place. `params`: each parameter's (offset, nbytes) in the
    region, which the recorded writes must cover exactly once. `mapper`: the model's `hf_to_vllm_mapper`."""
    sources: dict[int, tuple[str, torch.Tensor]] = {}

    def tracked():
        for name, t in weights:
            t = t.contiguous()
            sources[t.data_ptr()] = (name, t)
            yield name, t

    base = shared.region.data_ptr()
    recorder = _WriteRecorder(base, shared.size, sources)
    with torch.no_grad(), recorder:
        load(tracked())
    shared.layout, shared.refusal = None, None
    if recorder.other:
        shared.refusal = (f"the engine's loader does not copy every tensor as it is ({len(recorder.other)} other "
                          f"writes, e.g. {recorder.other[0]})")
        return shared
    wrong = exact_cover([r for ranges in recorder.exact.values() for r in ranges] + recorder.constant, params)
    if wrong:
        shared.refusal = f"the loaded tensors do not cover the parameters exactly once: {wrong}"
        return shared
    tensors = {name: t for _, (name, t) in sources.items()}
    layout = Layout({}, {}, {}, mapper)
    for name, ranges in recorder.exact.items():
        key = layout.key(name)
        if key is None or key in layout.offsets:
            shared.refusal = (f"the model's name mapper drops {name}, which its loader copies" if key is None
                              else f"two checkpoint names map to the engine's {key}")
            return shared
        layout.offsets[key] = [off for off, _ in ranges]
        layout.nbytes[key], layout.dtypes[key] = tensors[name].nbytes, tensors[name].dtype
    shared.layout = layout
    return shared


def parameter_ranges(model: torch.nn.Module, shared: SharedWeights) -> list[tuple[int, int]]:
    """Each parameter's (offset, nbytes) in the shared region; raises if one has left it (a loader replaced it)."""
    base, out = shared.region.data_ptr(), []
    for name, p in model.named_parameters():
        off = p.data_ptr() - base
        if not 0 <= off < shared.size:
            raise RuntimeError(f"parameter {name} is no longer in the shared weights (something replaced it)")
        out.append((off, p.nbytes))
    return out


# The sender's mappings of engines' files, kept across syncs: mapping a file costs a page fault per 4 KiB page on
# first touch, more than the copy itself.
_MAPPED: dict[tuple, torch.Tensor] = {}


def _region(target: dict) -> torch.Tensor:
    key = (target.get("node"), target["pid"], target["fd"], target["size"])
    region = _MAPPED.get(key)
    if region is None:
        with open(f"/proc/{target['pid']}/fd/{target['fd']}", "r+b") as f:
            # MAP_POPULATE maps every page now, in one pass, instead of one fault per page during the copy.
            flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
            region = torch.frombuffer(mmap.mmap(f.fileno(), target["size"], flags=flags), dtype=torch.uint8)
        _MAPPED.clear()  # one engine's file at a time per process: a restarted engine's old file is let go
        _MAPPED[key] = region
    return region


def plan_writes(layout: Layout, named: list[tuple[str, torch.Tensor]]
                ) -> tuple[list[tuple[torch.Tensor, str]], list[str]]:
    """([(tensor, its layout key)], the sent names the engine keeps nothing of: a tied output layer, say). Raises
    if a tensor the engine keeps is not sent (the old one would stay) or differs in dtype or size."""
    writes, ignored, keys = [], [], set()
    for name, t in named:
        key = layout.key(name)
        if key not in layout.offsets:
            ignored.append(name)
            continue
        if t.dtype != layout.dtypes[key] or t.nbytes != layout.nbytes[key]:
            raise ValueError(f"{name}: a {t.dtype} tensor of {t.nbytes} bytes sent, the engine's is a "
                             f"{layout.dtypes[key]} one of {layout.nbytes[key]}")
        writes.append((t, key))
        keys.add(key)
    missing = sorted(set(layout.offsets) - keys)
    if missing:
        raise ValueError(f"the weights sent do not match the engine's model: {len(missing)} of its tensors are not "
                         f"among them, e.g. {missing[:3]} (sent, not the engine's: {ignored[:3]})")
    return writes, ignored


def write_weights(target: dict, named: list[tuple[str, torch.Tensor]]) -> dict:
    """Copies each tensor into its places in the engine's shared file (`target`, from the engine): the sync's one
    copy, after every tensor is checked (plan_writes). Returns the bytes written, the seconds taken and the sent
    names the engine keeps nothing of."""
    return write_planned(target, *plan_writes(target["layout"], named))


def write_planned(target: dict, writes: list[tuple[torch.Tensor, str]], ignored: list[str]) -> dict:
    """write_weights after its checks (`plan_writes`' result): the copy alone."""
    start = time.perf_counter()
    layout: Layout = target["layout"]
    region, written = _region(target), 0
    with torch.no_grad():
        for t, key in writes:
            src = t.detach().contiguous().reshape(-1).view(torch.uint8)
            for off in layout.offsets[key]:
                region[off:off + t.nbytes].copy_(src)
                written += t.nbytes
    return {"bytes": written, "seconds": time.perf_counter() - start, "ignored": ignored}


# In the vLLM worker (run by the engine through `collective_rpc`): its model's parameters and their layout.
def share_worker_parameters(worker, folder: str) -> dict:
    """Moves the worker's model into shared memory and learns the layout by loading `folder`'s weights (the ones
    the engine has just loaded) once more."""
    from actors.weight_sync.saved import saved_weights

    start = time.perf_counter()
    model = worker.model_runner.model
    shared = share_parameters(model)
    learn_layout(shared, parameter_ranges(model, shared), model.load_weights, saved_weights(folder).items(),
                 getattr(model, "hf_to_vllm_mapper", None))
    worker.rlaif_shared_weights = shared
    return {"bytes": shared.size, "seconds": time.perf_counter() - start, "refusal": shared.refusal}


def worker_target(worker, names: list[str]) -> dict:
    """Where a sender of tensors `names` writes (see SharedWeights.target), after checking every parameter is still
    in the file."""
    shared: SharedWeights | None = getattr(worker, "rlaif_shared_weights", None)
    if shared is None:
        return {"refusal": "the engine was not started with shared weights"}
    parameter_ranges(worker.model_runner.model, shared)
    return shared.target(names)


# The sender's side (loop.sync_transport shared_memory), called by actors.weight_sync.send.broadcast_weights.
def sync_engines(engines: list, named: list[tuple[str, torch.Tensor]], label: str | None
                 ) -> tuple[list[dict], list, list[str]]:
    """Writes the weights into every engine on this node that holds them in shared memory, one engine after the
    other. Returns (the synced engines' stats, the engines it could not sync this way, why not)."""
    import ray

    node = ray.get_runtime_context().get_node_id()
    names = [n for n, _ in named]
    targets = ray.get([e.shared_weights_target.remote(names) for e in engines])
    stats, rest, why = [], [], []
    for engine, target in zip(engines, targets):
        refusal = target.get("refusal") or (None if target["node"] == node else "the engine is on another node")
        if refusal:
            rest.append(engine)
            why.append(refusal)
            continue
        planned = plan_writes(target["layout"], named)  # raises before the engine's weights are touched
        ray.get(engine.begin_shared_write.remote(label))
        written = write_planned(target, *planned)
        stats.append(ray.get(engine.end_shared_write.remote(label, written)))
    return stats, rest, why
