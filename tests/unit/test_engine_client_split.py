"""EngineClient splits a batch an engine cannot hold (out of memory) until it fits; rows come back in order, once.
The engine here is a stand-in actor handle: the splitting is pure logic."""
import pytest

from actors.pool import EngineClient
from actors.vllm_engine import EngineOverloaded


class FakeRemote:
    def __init__(self, fn):
        self.fn = fn

    def remote(self, *args):
        return self.fn(*args)


class LimitedEngine:
    def __init__(self, limit: int):
        self.limit, self.batches = limit, []
        self.generate = FakeRemote(self._generate)

    def _generate(self, requests, sampling):
        if len(requests) > self.limit:
            raise EngineOverloaded(f"{len(requests)} > {self.limit}")
        self.batches.append(len(requests))
        return [[{"text": f"{r['id']}:{s['seed'] if isinstance(sampling, list) else 'same'}"}]
                for r, s in zip(requests, sampling if isinstance(sampling, list) else [sampling] * len(requests))]


@pytest.fixture(autouse=True)
def no_ray_get(monkeypatch):
    monkeypatch.setattr("actors.pool.ray.get", lambda x: x)


def test_an_overloaded_batch_is_split_until_it_fits():
    engine = LimitedEngine(limit=3)
    client = EngineClient([engine])
    requests = [{"id": i} for i in range(10)]
    out = client.call(requests, [{"seed": i} for i in range(10)])
    assert [o[0]["text"] for o in out] == [f"{i}:{i}" for i in range(10)]  # in order, each once, own sampling
    assert sum(engine.batches) == 10 and max(engine.batches) <= 3


def test_a_single_request_that_does_not_fit_is_an_error():
    client = EngineClient([LimitedEngine(limit=0)])
    with pytest.raises(EngineOverloaded):
        client.call([{"id": 0}, {"id": 1}], {"seed": 0})
