"""The shared-memory transport's core (actors.weight_sync.shared_memory) on small torch modules whose `load_weights`
loads as vLLM's do: q, k and v stacked into one fused parameter, an embedding padded with zero rows, a tied output
layer. Real shared memory (a memfd, written through /proc/<pid>/fd as a sender on the node would open it)."""
import pytest
import torch

from actors.weight_sync import shared_memory as sm


class Fused(torch.nn.Module):
    """A fused qkv projection and a padded, tied embedding, loaded from checkpoint names as vLLM loads them."""

    def __init__(self, transpose: bool = False, skip_v: bool = False):
        super().__init__()
        self.qkv = torch.nn.Parameter(torch.zeros(12, 4))  # q (4 rows), k (4), v (4)
        self.embed = torch.nn.Parameter(torch.zeros(8, 4))  # 6 real rows + 2 padding rows
        self.lm_head = self.embed  # tied: one parameter
        self.transpose, self.skip_v = transpose, skip_v

    def load_weights(self, weights):
        for name, w in weights:
            if name == "embed.weight":
                self.embed.data[:6].copy_(w)
                self.embed.data[6:].fill_(0)
            elif name == "lm_head.weight":
                continue  # tied: the embedding serves
            else:
                row = {"q": 0, "k": 4, "v": 8}[name[0]]
                if name[0] == "v" and self.skip_v:
                    continue
                self.qkv.data[row:row + 4].copy_(w.t().contiguous() if self.transpose and name[0] == "k" else w)


def checkpoint(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {n: torch.randn(shape, generator=g) for n, shape in
            [("q.weight", (4, 4)), ("k.weight", (4, 4)), ("v.weight", (4, 4)), ("embed.weight", (6, 4)),
             ("lm_head.weight", (6, 4))]}


def shared_model(**kwargs):
    model = Fused(**kwargs)
    shared = sm.share_parameters(model)
    sm.learn_layout(shared, sm.parameter_ranges(model, shared), model.load_weights, checkpoint(0).items())
    return model, shared


def test_a_sender_writes_each_tensor_where_the_loader_put_it():
    model, shared = shared_model()
    assert shared.refusal is None
    new = checkpoint(1)
    out = sm.write_weights(shared.target(list(new)), list(new.items()))
    assert out["ignored"] == ["lm_head.weight"]  # read by the loader, nothing kept (tied)
    assert out["bytes"] == sum(new[n].nbytes for n in ("q.weight", "k.weight", "v.weight", "embed.weight"))
    # What the engine computes with now equals what its own loader makes of the new checkpoint.
    reference = Fused()
    reference.load_weights(new.items())
    assert torch.equal(model.qkv, reference.qkv) and torch.equal(model.embed, reference.embed)
    assert model.lm_head is model.embed and not torch.equal(model.qkv, Fused().qkv)


def test_parameters_move_into_one_shared_file_unchanged():
    model = Fused()
    model.load_weights(checkpoint(2).items())
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    shared = sm.share_parameters(model)
    base = shared.region.data_ptr()
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name])
        assert base <= p.data_ptr() < base + shared.size and (p.data_ptr() - base) % sm.ALIGN == 0
    # Another opener of the file (a sender) sees the same bytes.
    with open(f"/proc/self/fd/{shared.fd}", "rb") as f:
        data = f.read(model.qkv.nbytes)
    assert torch.equal(torch.frombuffer(bytearray(data), dtype=torch.float32).view(12, 4), before["qkv"])


@pytest.mark.parametrize("kwargs, reason", [
    ({"transpose": True}, "does not copy every tensor as it is (1 other writes, e.g. copy_ of a tensor not loaded"),
    ({"skip_v": True}, "do not cover the parameters exactly once: 64 parameter bytes are never written"),
])
def test_a_loader_that_transforms_or_leaves_out_a_tensor_is_refused(kwargs, reason):
    _, shared = shared_model(**kwargs)
    assert shared.layout is None and reason in shared.refusal


def test_weights_of_another_model_are_refused_before_anything_is_written():
    model, shared = shared_model()
    before = model.qkv.detach().clone()
    wrong = checkpoint(3)
    del wrong["v.weight"]
    with pytest.raises(ValueError, match=r"1 of its tensors are not among them, e.g. \['v.weight'\]"):
        sm.write_weights(shared.target(list(wrong)), list(wrong.items()))
    bigger = {**checkpoint(3), "q.weight": torch.zeros(5, 4)}
    with pytest.raises(ValueError, match="q.weight: a torch.float32 tensor of 80 bytes sent, the engine's is a "
                                         "torch.float32 one of 64"):
        sm.write_weights(shared.target(list(bigger)), list(bigger.items()))
    assert torch.equal(model.qkv, before)


def test_exact_cover():
    params = [(0, 64), (64, 32)]
    assert sm.exact_cover([(0, 32), (32, 32), (64, 32)], params) is None
    assert sm.exact_cover([(0, 64), (32, 32), (64, 32)], params) == "two writes overlap at byte 32"
    assert sm.exact_cover([(0, 64), (64, 16)], params) == "16 parameter bytes are never written"
    assert sm.exact_cover([(48, 32), (0, 48)], params) == "a write at byte 48 is not inside one parameter"


class PrefixMapper:
    """vLLM's WeightsMapper's prefix rule, as Qwen2-VL's `hf_to_vllm_mapper` uses it (the first prefix that matches)."""

    def __init__(self, prefixes):
        self.prefixes = prefixes

    def map_name(self, name):
        for old, new in self.prefixes.items():
            if name.startswith(old):
                return new + name[len(old):]
        return name


def test_a_sender_may_use_the_other_name_transformers_gives_a_tensor():
    """The layout is learnt from the saved names (`q.weight`) and keyed through the model's mapper, so a live model's
    state dict (`model.language_model.q.weight`) writes the same places; the engine works out the sender's keys, so
    the mapper stays with it; a name the engine keeps nothing of is reported, not written."""
    mapper = PrefixMapper({"model.language_model.": "lm.", "": "lm."})
    model = Fused()
    shared = sm.share_parameters(model)
    sm.learn_layout(shared, sm.parameter_ranges(model, shared), model.load_weights, checkpoint(0).items(), mapper)
    assert shared.refusal is None and set(shared.layout.offsets) == {"lm.q.weight", "lm.k.weight", "lm.v.weight",
                                                                     "lm.embed.weight"}
    new = checkpoint(4)
    live = [(f"model.language_model.{n}", t) for n, t in new.items() if n != "lm_head.weight"] + [
        ("rotary.inv_freq", torch.ones(2))]
    target = shared.target([n for n, _ in live])  # as the engine answers a sender in another process
    assert target["layout"].mapper is None  # (a vLLM class would import vLLM into the sender)
    out = sm.write_weights(target, live)
    assert out["ignored"] == ["rotary.inv_freq"]
    reference = Fused()
    reference.load_weights(new.items())
    assert torch.equal(model.qkv, reference.qkv) and torch.equal(model.embed, reference.embed)


class StackedMapper:
    """vLLM's WeightsMapper's stacked rule (Llama's gate_proj and up_proj -> gate_up_proj): q, k and v map to one
    name, told apart by the shard (`_map_name_with_shard`), which `map_name` drops."""

    def _map_name_with_shard(self, name):
        return ("qkv.weight", name[0]) if name[0] in "qkv" else (name, None)

    def map_name(self, name):
        return self._map_name_with_shard(name)[0]


class NoShardMapper:
    """The same rule in a vLLM whose mapper has only `map_name`."""

    def map_name(self, name):
        return StackedMapper().map_name(name)


@pytest.mark.parametrize("mapper, keys", [
    (StackedMapper(), {"qkv.weight#q", "qkv.weight#k", "qkv.weight#v", "embed.weight"}),
    (NoShardMapper(), None),  # q, k and v would collide: refused, never mixed up
])
def test_names_that_a_mapper_stacks_stay_apart_by_their_shard(mapper, keys):
    model = Fused()
    shared = sm.share_parameters(model)
    sm.learn_layout(shared, sm.parameter_ranges(model, shared), model.load_weights, checkpoint(0).items(), mapper)
    if keys is None:
        assert shared.layout is None and "two checkpoint names map to the engine's qkv.weight" in shared.refusal
        return
    assert set(shared.layout.offsets) == keys
    new = checkpoint(5)
    sm.write_weights(shared.target(list(new)), list(new.items()))
    reference = Fused()
    reference.load_weights(new.items())
    assert torch.equal(model.qkv, reference.qkv)
