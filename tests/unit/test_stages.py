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


def test_a_run_folder_of_an_earlier_layout_is_refused_with_a_clear_message(tmp_path):
    import json

    import pytest

    from pipelines.orchestration.resume import LayoutMismatch

    (tmp_path / "manifest.json").write_text(json.dumps({"stages": {"ingest": {"status": "done", "config_hash": "x"}}}))
    with pytest.raises(LayoutMismatch, match="earlier version .* start a new run folder"):
        Stages(parse_config({}), Manifest(tmp_path), resume=True)
    Stages(parse_config({}), Manifest(tmp_path), resume=False)  # a fresh run over it is fine, and marks the layout
    assert Manifest(tmp_path).data["layout_version"] >= 2
