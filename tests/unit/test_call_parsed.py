"""The re-ask loop shared by the judge and the caption fact checker (engines replaced by a scripted reply list)."""
from actors.pool import EngineClient
from rlaif.judging import parse_judgment


class ScriptedEngines(EngineClient):
    def __init__(self, replies_per_call: list[list[str]]):
        self.replies = iter(replies_per_call)
        self.samplings: list[dict] = []

    def call(self, requests, sampling):
        self.samplings.append(sampling)
        replies = next(self.replies)
        assert len(replies) == len(requests)
        return [[{"text": t}] for t in replies]


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
