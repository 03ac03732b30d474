from rlaif.seeding import request_seed, seeded


def test_seeds_are_stable_and_distinct():
    assert request_seed("p1", 0, "answer") == request_seed("p1", 0, "answer")
    assert len({request_seed("p1", r, "answer") for r in range(100)}) == 100
    assert 0 <= request_seed("x") < 2**31


def test_an_explicit_seed_wins():
    assert seeded({"seed": 7, "n": 2}, "p") == {"seed": 7, "n": 2}
    assert seeded({"n": 2}, "p")["seed"] == request_seed("p")
