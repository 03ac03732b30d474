from actors.pool import pool_stats


class FakePool:
    def __init__(self, ready_at: float, busy: list[float]):
        self.ready_at = ready_at
        self.busy = busy

    def health(self) -> list[dict]:
        return [{"served": {"busy_s": b}} for b in self.busy]


def test_each_pool_once_under_its_first_name_with_its_engines_counters():
    policy, judge = FakePool(10.0, [3.0, 5.0]), FakePool(12.0, [1.5])
    pools = {"policy": policy, "judge": judge, "captioner": policy, "extra:m": None}
    stats = pool_stats(pools, now=20.0)
    assert list(stats) == ["policy", "judge"]  # the captioner is the policy pool: counted once
    assert stats["policy"] == {"also": ["captioner"], "ready_at": 10.0, "until": 20.0,
                               "engines": [{"served": {"busy_s": 3.0}}, {"served": {"busy_s": 5.0}}]}
    assert stats["judge"]["also"] == [] and stats["judge"]["engines"] == [{"served": {"busy_s": 1.5}}]


def test_policy_as_judge_is_one_pool():
    policy = FakePool(0.0, [2.0])
    assert list(pool_stats({"policy": policy, "judge": policy}, now=1.0)) == ["policy"]
