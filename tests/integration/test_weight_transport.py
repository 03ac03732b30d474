"""Weight sync's collective transport (loop.sync_transport collective) on real Ray and a live vLLM engine: weights
sent from another process (as the trainer's rank 0 sends them) over a gloo group reach the engine, which then
generates exactly what transformers generates with them; and a group that cannot form falls back to the object store,
the sync still landing, with the reason in its stats, or, with loop.sync_transport_required, fails naming it."""
import pytest
import ray
import torch

from actors.vllm_engine import EngineActor
from actors.weight_sync import broadcast_weights
from rlaif.policy_model import load_policy
from rlaif.testkit.tiny_models import ensure_model
from rlaif.vlm_inputs import encode_prompt

pytestmark = pytest.mark.integration
QUESTIONS = ["What colour is the circle?", "Describe the video in detail."]
GREEDY = {"n": 1, "temperature": 0.0, "max_tokens": 8}


@pytest.fixture(scope="module")
def engine(ray_local):
    engine = EngineActor.options(num_cpus=0.5).remote("tiny-qwen2-vl", role="policy", max_model_len=1024)
    ray.get(engine.health.remote())
    yield engine
    ray.kill(engine)


@ray.remote
def _send(engines, weights, **kwargs):
    """The sender in its own process, as in a Ray Train worker."""
    return broadcast_weights(engines, weights.items(), **kwargs)


def _perturbed(seed):
    """The tiny policy with every weight moved by seeded noise: new weights that change its greedy answers."""
    model, processor = load_policy(ensure_model("tiny-qwen2-vl"))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model, processor


def _hf_greedy(model, processor):
    out = []
    for q in QUESTIONS:
        enc = encode_prompt(processor, q, None)
        with torch.no_grad():
            ids = model.generate(**enc, max_new_tokens=GREEDY["max_tokens"], do_sample=False)
        text = processor.tokenizer.decode(ids[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        # vLLM holds back the bytes of a character its tokens have not finished (random weights end on such bytes).
        out.append(text.rstrip("\ufffd").strip())
    return out


def _engine_greedy(engine):
    requests = [{"messages": [{"role": "user", "content": q}]} for q in QUESTIONS]
    return [s[0]["text"].strip() for s in ray.get(engine.generate.remote(requests, GREEDY))]


@pytest.mark.parametrize("seed, timeout_s, transport", [
    (1, 30.0, "collective"),
    # An engine cannot join within a millisecond: the group never forms.
    (2, 1e-3, "object_store"),
])
def test_collective_sync_reaches_the_engine_or_falls_back(engine, seed, timeout_s, transport):
    model, processor = _perturbed(seed)
    expected = _hf_greedy(model, processor)
    assert any(expected)
    before = _engine_greedy(engine)
    version = ray.get(engine.health.remote())["weights_version"]

    stats = ray.get(_send.remote([engine], dict(model.state_dict()), transport="collective", timeout_s=timeout_s,
                                 label=f"perturbed-{seed}"))

    assert stats["sync_transport"] == transport and stats["engines_synced"] == 1
    if transport == "collective":
        assert stats["sync_backend"] == "gloo" and "sync_fallback" not in stats
    else:
        assert stats["sync_fallback"]  # says why
    # Loaded once: a failed collective attempt changed nothing on the engine before the fallback loaded the weights.
    assert stats["engine_weights_version"] == [version + 1]
    after = _engine_greedy(engine)
    assert after == expected and after != before
    assert ray.get(engine.health.remote())["weights"] == f"perturbed-{seed}"


def test_required_collective_transport_fails_instead_of_falling_back(engine):
    """loop.sync_transport_required: a group that cannot form is an error naming the cause, and the engine keeps
    the weights it had (nothing went through the object store)."""
    from actors.weight_sync.send import SyncTransportError

    model, _ = _perturbed(3)
    before = _engine_greedy(engine)
    health = ray.get(engine.health.remote())
    with pytest.raises(SyncTransportError) as err:  # Ray re-raises the sender's exception type (as a subclass)
        ray.get(_send.remote([engine], dict(model.state_dict()), transport="collective", timeout_s=1e-3,
                             label="perturbed-3", required=True))
    msg = str(err.value)
    print(f"\nthe error: {msg.splitlines()[-1] if msg else msg}")
    assert "collective weight sync failed (gloo: " in msg and "sync_transport_required is true" in msg
    after = ray.get(engine.health.remote())
    assert (after["weights_version"], after["weights"]) == (health["weights_version"], health["weights"])
    assert _engine_greedy(engine) == before


def test_an_engine_on_the_plain_cpu_kernel_copies_new_weights_in_place(ray_local):
    """pools.*.cpu_gemm torch: the engine's linear layers keep their weights, a sync copies the new ones into them
    (no layerwise reload, no repacking), and the engine then generates exactly what transformers generates."""
    from actors.weight_sync import pack_buckets

    plain = EngineActor.options(num_cpus=0.5).remote("tiny-qwen2-vl", role="policy", max_model_len=1024,
                                                      cpu_gemm="torch")
    try:
        model, processor = _perturbed(4)
        expected = _hf_greedy(model, processor)
        before = _engine_greedy(plain)
        stats = ray.get(plain.load_weight_buckets.remote(*pack_buckets(model.state_dict().items()), label="p4"))
        assert stats["load"] == "in place" and stats["tensors"] == len(model.state_dict())
        after = _engine_greedy(plain)
        assert after == expected and after != before
    finally:
        ray.kill(plain)


def test_shared_memory_sync_writes_into_the_engine_and_falls_back_where_it_cannot(engine):
    """loop.sync_transport shared_memory: a sender in another process writes the weights straight into the
    parameters of an engine started with shared weights (plain CPU kernel), which then generates exactly what
    transformers generates with them. An engine without shared weights (the module's oneDNN engine) in the same sync
    goes through the object store, the reason in the stats; with sync_transport_required the sync fails naming it."""
    from actors.weight_sync.send import SyncTransportError

    shared = EngineActor.options(num_cpus=0.5).remote("tiny-qwen2-vl", role="policy", max_model_len=1024,
                                                       cpu_gemm="torch", shared_weights=True)
    try:
        model, processor = _perturbed(5)
        expected = _hf_greedy(model, processor)
        before = _engine_greedy(shared)
        versions = [ray.get(e.health.remote())["weights_version"] for e in (shared, engine)]

        stats = ray.get(_send.remote([shared, engine], dict(model.state_dict()), transport="shared_memory",
                                     label="perturbed-5"))

        assert stats["sync_transport"] == "shared_memory" and stats["engines_synced"] == 2
        assert stats["sync_fallback"].startswith("shared memory: ") and "not started with shared weights" in \
            stats["sync_fallback"]
        assert stats["sync_ignored"] == ["lm_head.weight"]  # tied to the embedding, which the engine keeps once
        assert stats["engine_weights_version"] == [v + 1 for v in versions]
        for e in (shared, engine):
            after = _engine_greedy(e)
            assert after == expected and after != before
            assert ray.get(e.health.remote())["weights"] == "perturbed-5"

        model, processor = _perturbed(6)
        with pytest.raises(SyncTransportError, match=r"1 of 2 engine\(s\) cannot take a shared-memory weight sync"):
            ray.get(_send.remote([shared, engine], dict(model.state_dict()), transport="shared_memory",
                                 label="perturbed-6", required=True))
        assert _engine_greedy(engine) == expected  # the engine it could not write kept its weights

        # A sender that dies between begin_shared_write and end_shared_write: the engine refuses to generate from
        # half-written weights and its label names no policy (EnginePool.hold resends one), until a sync lands.
        ray.get(shared.begin_shared_write.remote("perturbed-7"))
        assert ray.get(shared.health.remote())["weights"] == "partly written: perturbed-7"
        with pytest.raises(RuntimeError, match="being written in place"):
            _engine_greedy(shared)
        ray.get(_send.remote([shared], dict(model.state_dict()), transport="object_store", label="perturbed-6"))
        assert _engine_greedy(shared) == _hf_greedy(model, processor)
    finally:
        ray.kill(shared)
