"""The re-ask loop shared by the judge and the caption fact checker (engines replaced by a scripted reply list)."""
from actors.pool import EngineClient
from rlaif.judging import parse_judgment


class ScriptedEngines(EngineClient):
    def __init__(self, replies_per_call: list[list[str]]):
        self.replies = iter(replies_per_call)
        self.samplings: list[dict] = []
        self.seeds: list[list] = []

    def call(self, requests, sampling):
        assert isinstance(sampling, list) and len(sampling) == len(requests)  # one sampling per request
        self.samplings.append(sampling[0])
        self.seeds.append([s.get("seed") for s in sampling])
        replies = next(self.replies)
        assert len(replies) == len(requests)
        # None stands for a request the engine refused (its prompt over the context length)
        return [[{"text": "", "finish_reason": "prompt_too_long"}] if t is None else [{"text": t, "finish_reason": "stop"}]
                for t in replies]


def test_only_unparsed_replies_are_asked_again_with_sampling():
    engines = ScriptedEngines([["Score: 4", "no score", "nope"], ["Score: 2", "still nothing"], ["Score: 5"]])
    verdicts, attempts = engines.call_parsed([{}] * 3, {"temperature": 0.0, "max_tokens": 8}, parse_judgment,
                                             lambda v: v.parse_ok, retries=2)
    assert [v.score for v in verdicts] == [4, 2, 5] and attempts == [1, 2, 3]
    assert [s["temperature"] for s in engines.samplings] == [0.0, 0.7, 0.7]
    assert all(s["n"] == 1 and s["max_tokens"] == 8 for s in engines.samplings)


def test_a_reply_that_never_parses_stays_a_failure():
    engines = ScriptedEngines([["?"], ["?"]])
    verdicts, attempts = engines.call_parsed([{}], {"temperature": 1.0}, parse_judgment, lambda v: v.parse_ok,
                                             retries=1)
    assert not verdicts[0].parse_ok and verdicts[0].score is None and attempts == [2]
    assert engines.samplings[1]["temperature"] == 1.0  # a retry never lowers the temperature


def test_seeded_requests_retry_with_the_next_seed_and_refusals_are_not_retried():
    engines = ScriptedEngines([["no score", None, "Score: 3"], ["Score: 1"]])
    verdicts, attempts = engines.call_parsed([{}] * 3, [{"seed": 10}, {"seed": 20}, {"seed": 30}], parse_judgment,
                                             lambda v: v.parse_ok, retries=2)
    assert engines.seeds == [[10, 20, 30], [11]]  # only the unparsed one is asked again, with the next seed
    assert verdicts[0].score == 1 and verdicts[1] is None and verdicts[2].score == 3 and attempts == [2, 1, 1]
