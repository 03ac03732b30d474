"""Weight sync to several live vLLM engines at once, by both transports, on real Ray: one gloo group holding the sender
and every engine (one broadcast per bucket reaches all of them), or one object-store copy of each bucket that every
engine fetches. Afterwards every engine generates exactly what transformers generates with the new weights."""
import pytest
import ray

from actors.vllm_engine import EngineActor
from tests.integration.test_weight_transport import _engine_greedy, _hf_greedy, _perturbed, _send

pytestmark = pytest.mark.integration
ENGINES = 3


@pytest.fixture(scope="module")
def engines(ray_local):
    engines = [EngineActor.options(num_cpus=0.5).remote("tiny-qwen2-vl", role="policy", max_model_len=1024)
               for _ in range(ENGINES)]
    ray.get([e.health.remote() for e in engines])
    yield engines
    for e in engines:
        ray.kill(e)


@pytest.mark.parametrize("seed, transport", [(11, "collective"), (12, "object_store")])
def test_one_sync_reaches_every_engine(engines, seed, transport):
    model, processor = _perturbed(seed)
    expected = _hf_greedy(model, processor)
    before = [_engine_greedy(e) for e in engines]
    versions = [h["weights_version"] for h in ray.get([e.health.remote() for e in engines])]

    stats = ray.get(_send.remote(engines, dict(model.state_dict()), transport=transport, timeout_s=60.0,
                                 label=f"fanout-{seed}"))

    assert stats["sync_transport"] == transport and stats["engines_synced"] == ENGINES
    assert "sync_fallback" not in stats
    if transport == "collective":
        assert stats["sync_backend"] == "gloo"  # one group: the sender plus all three engines
    assert stats["engine_weights_version"] == [v + 1 for v in versions]
    after = [_engine_greedy(e) for e in engines]
    assert after == [expected] * ENGINES and all(a != b for a, b in zip(after, before))
    assert {h["weights"] for h in ray.get([e.health.remote() for e in engines])} == {f"fanout-{seed}"}
