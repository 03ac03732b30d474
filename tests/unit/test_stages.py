from pipelines.orchestration.resume import Stages
from rlaif.config import parse_config
from rlaif.manifest import Manifest


def _run_all(cfg, run_dir, resume, calls):
    stages = Stages(cfg, Manifest(run_dir), resume)
    for name in ("a", "b", "c"):
        stages.run(name, ("ingest",), lambda name=name: calls.append(name) or 1)
    return stages


def test_resume_skips_done_stages_and_redoes_everything_after_the_first_redo(tmp_path):
    cfg = parse_config({})
    calls: list[str] = []
    _run_all(cfg, tmp_path, False, calls)
    assert calls == ["a", "b", "c"]

    calls.clear()
    _run_all(cfg, tmp_path, True, calls)
    assert calls == []  # all done with the same config

    m = Manifest(tmp_path)
    m.record("b", "running", m.stage("b")["config_hash"])  # b was interrupted
    calls.clear()
    _run_all(cfg, tmp_path, True, calls)
    assert calls == ["b", "c"]  # c depends on b's new output

    calls.clear()
    _run_all(parse_config({"ingest": {"num_frames": 4}}), tmp_path, True, calls)
    assert calls == ["a", "b", "c"]  # the config they depend on changed
    assert Manifest(tmp_path).stage("c")["rows"] == 1 and "seconds" in Manifest(tmp_path).stage("c")
