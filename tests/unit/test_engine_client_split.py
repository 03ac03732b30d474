"""EngineClient splits a batch an engine cannot hold (out of memory) until it fits; a batch whose call kills its
engine is sent again a bounded number of times, then split, and a request that alone still kills its engine is
answered engine_crashed; rows come back in order, once. The engines here are stand-in actor handles whose deaths
raise what Ray raises (ActorUnavailableError / ActorDiedError) and leave the call's running mark behind, as a killed
process does: the retry, split and refuse logic is pure logic (the real deaths: tests/integration/test_faults.py)."""
import pytest
from ray.exceptions import ActorDiedError, ActorUnavailableError

from actors.pool import EngineClient, Engines
from actors.vllm_engine import EngineOverloaded
from rlaif.schemas import ENGINE_CRASHED, REFUSED_FINISH


class FakeRemote:
    def __init__(self, fn):
        self.fn = fn

    def remote(self, *args, **kwargs):
        return self.fn(*args, **kwargs)


def answers(requests, sampling):
    samplings = sampling if isinstance(sampling, list) else [sampling] * len(requests)
    return [[{"text": f"{r['id']}:{s['seed'] if isinstance(sampling, list) else 'same'}", "finish_reason": "stop"}]
            * s.get("n", 1) for r, s in zip(requests, samplings)]


class LimitedEngine:
    def __init__(self, limit: int):
        self.limit, self.batches = limit, []
        self.generate = FakeRemote(self._generate)

    def _generate(self, requests, sampling, call_id=None):
        if len(requests) > self.limit:
            raise EngineOverloaded(f"{len(requests)} > {self.limit}")
        self.batches.append(len(requests))
        return answers(requests, sampling)


MARKS: set[str] = set()  # the running marks a dead engine left behind (Ray's internal KV in the real engine)


class CrashingEngine:
    """Dies (its call's running mark stays) on any batch holding a request with `poison`; `transient` more deaths on
    the next calls whatever they hold (an unrelated OOM kill, a lost node); `restarting`: calls refused while Ray
    restarts it (no mark: they never ran). Counts its deaths and what it answered."""

    def __init__(self, transient: int = 0, restarting: int = 0):
        self.transient, self.restarting = transient, restarting
        self.deaths, self.calls, self.answered = 0, [], []
        self.generate = FakeRemote(self._generate)

    def _generate(self, requests, sampling, call_id=None):
        self.calls.append([r["id"] for r in requests])
        if self.restarting:
            self.restarting -= 1
            raise ActorUnavailableError("The actor is temporarily unavailable: restarting", None)
        if self.transient or any(r.get("poison") for r in requests):
            self.transient = max(0, self.transient - 1)
            self.deaths += 1
            MARKS.add(call_id)
            raise ActorUnavailableError("RpcError: Socket closed", None) if self.deaths % 2 else ActorDiedError()
        self.answered.extend(r["id"] for r in requests)
        return answers(requests, sampling)


@pytest.fixture(autouse=True)
def no_ray(monkeypatch):
    MARKS.clear()
    monkeypatch.setattr("actors.pool.ray.get", lambda x: x)
    monkeypatch.setattr("actors.pool.time.sleep", lambda s: None)

    def was_running(call_id):
        found = call_id in MARKS
        MARKS.discard(call_id)
        return found

    monkeypatch.setattr("actors.pool.call_was_running", was_running)


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


def test_a_request_that_kills_its_engine_is_retried_a_bounded_number_of_times_then_answered_engine_crashed():
    engine = CrashingEngine()
    requests = [{"id": i, "poison": i == 5} for i in range(8)]
    out = EngineClient([engine], crash_retries=1).call(requests, [{"seed": i, "n": 2} for i in range(8)])
    # Every other request answered exactly once, in order, with its own sampling; the poison one refused alone.
    assert sorted(engine.answered) == [0, 1, 2, 3, 4, 6, 7] and len(engine.answered) == 7
    assert [o[0]["text"] for i, o in enumerate(out) if i != 5] == [f"{i}:{i}" for i in range(8) if i != 5]
    assert [s["finish_reason"] for s in out[5]] == [ENGINE_CRASHED] * 2 and ENGINE_CRASHED in REFUSED_FINISH
    assert all(s["text"] == "" and s["n_tokens"] == 0 for s in out[5])
    # The batch of 8 twice (sent once, retried once), then halves sent once each (4, 2), then the request alone twice.
    assert engine.calls == [list(range(8))] * 2 + [[0, 1, 2, 3], [4, 5, 6, 7], [4, 5], [4], [5], [5], [6, 7]]
    assert engine.deaths == 2 + 1 + 1 + 2


@pytest.mark.parametrize("retries", [0, 2])
def test_the_retries_are_the_configured_ones(retries):
    engine = CrashingEngine()
    out = EngineClient(Engines([engine], crash_retries=retries)).call([{"id": 0, "poison": True}, {"id": 1}], {})
    assert out[0][0]["finish_reason"] == ENGINE_CRASHED and out[1][0]["text"] == "1:same"
    assert engine.deaths == 2 * (retries + 1)  # the pair, then the poison alone: each sent 1 + retries times


def test_a_transient_death_is_retried_and_nothing_is_refused():
    engine = CrashingEngine(transient=1)
    out = EngineClient([engine], crash_retries=1).call([{"id": i} for i in range(4)], {})
    assert [o[0]["text"] for o in out] == [f"{i}:same" for i in range(4)] and engine.deaths == 1
    assert engine.calls == [[0, 1, 2, 3]] * 2  # retried whole, not split


def test_calls_refused_while_the_engine_restarts_do_not_count():
    # A call sent while the engine restarts (after another call killed it) never ran: it waits, it is not blamed.
    engine = CrashingEngine(restarting=6)
    out = EngineClient([engine], crash_retries=0).call([{"id": 0}, {"id": 1}], {})
    assert [o[0]["text"] for o in out] == ["0:same", "1:same"] and engine.deaths == 0


def test_a_retry_goes_to_the_next_engine_of_the_pool():
    dying, healthy = CrashingEngine(transient=1), CrashingEngine()
    client = EngineClient([dying, healthy], crash_retries=1)
    client._turn = 0
    assert client.call([{"id": 0}], {})[0][0]["text"] == "0:same"
    assert dying.deaths == 1 and healthy.answered == [0]


def test_an_engine_shut_down_for_good_is_an_error():
    err = ActorDiedError()
    err.error_msg = "The actor is dead because it was killed by `ray.kill`."

    def gone(*args, **kwargs):
        raise err

    killed = type("Killed", (), {"generate": FakeRemote(gone)})()
    with pytest.raises(ActorDiedError):
        EngineClient([killed]).call([{"id": 0}], {})


def test_a_judging_request_that_kills_its_engine_is_refused_with_its_reason():
    engine = CrashingEngine()
    refused: dict[int, str] = {}
    requests = [{"id": 0}, {"id": 1, "poison": True}, {"id": 2}]
    values, attempts = EngineClient([engine], crash_retries=0).call_parsed(
        requests, {"seed": 0}, parse=lambda text: text, ok=lambda v: True, retries=2, refused=refused)
    assert values == ["0:0", None, "2:0"] and attempts == [1, 1, 1]  # the crashed one is not asked again
    assert refused == {1: ENGINE_CRASHED}


def test_a_worker_builds_a_stages_client_once_and_drops_it_for_the_next_stage():
    from actors import pool

    built = []

    class Counting(EngineClient):
        def __init__(self, engines, tag):
            super().__init__(engines)
            built.append(tag)

        def __call__(self, batch):
            return f"{batch} by {id(self)}"

    pool._CLIENT.clear()
    first = [pool.forward_batch(b, "stage-a", Counting, [object()], {"tag": "a"}) for b in ("x", "y")]
    assert built == ["a"] and first[0].split(" by ")[1] == first[1].split(" by ")[1]  # one client for the stage
    pool.forward_batch("z", "stage-b", Counting, [object()], {"tag": "b"})
    assert built == ["a", "b"] and list(pool._CLIENT) == ["stage-b"]  # the finished stage's client is gone
