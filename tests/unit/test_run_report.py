"""The run report (pipelines.apps.run_report, rlaif.report) built from small run folders written here: schema-correct
tables, a manifest with two trained rounds, frames as small uint8 arrays; and a run that has only evaluated its
starting policy. Checked by content: the tables' figures, every image a PNG that parses, the page's images inlined,
the gallery's questions and answers, model output shown as text."""
import base64
import io
import json
import logging
import re
from collections import Counter
from html.parser import HTMLParser

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from PIL import Image

from pipelines.apps.run_report import refresh_report, write_report
from pipelines.stages.io import write_table
from rlaif.layout import RunLayout
from rlaif.report.gallery import frame_strip, pick
from rlaif.report.page import text, to_html
from rlaif.report.plots import score_counts, score_shares
from rlaif.schemas import JUDGMENTS, PROMPTS, VIDEOS

HOSTILE = '<script>alert(1)</script> ![x](http://evil.example/x.png) | *bold*'
COLOURS = {"v0": (255, 0, 0), "v1": (0, 0, 255), "v2": (0, 255, 0)}
# Held-out questions: (prompt_id, video, question, reference); v2's has no reference answer.
HELD = [("v0-q0", "v0", "What colour is the background?", "red"),
        ("v1-q0", "v1", "What colour is the square?", "green"),
        ("v1-q1", "v1", "Which way does it move?", "left"),
        ("v2-q0", "v2", "What is in the video?", None)]
# Answers per eval folder: prompt_id -> (answer, score, explanation). v1-q0 changes and turns right; v2-q0's last
# answer is hostile markup.
ANSWERS = {
    "round_base": {"v0-q0": ("red", 5.0, "matches"), "v1-q0": ("blue", 1.0, "the caption says green"),
                   "v1-q1": ("left", 4.0, ""), "v2-q0": ("a square", 3.0, "")},
    "round_0": {"v0-q0": ("red", 5.0, "matches"), "v1-q0": ("blue", 2.0, ""), "v1-q1": ("left", 4.0, ""),
                "v2-q0": ("a square", 3.0, "")},
    "round_1": {"v0-q0": ("red", 5.0, "matches"), "v1-q0": ("green", 5.0, "the caption says green"),
                "v1-q1": ("left", 4.0, ""), "v2-q0": (HOSTILE, None, "")},
}
EVALS = {"round_base": (-1, 0.667, 3.25), "round_0": (0, 0.667, 3.5), "round_1": (1, 1.0, 4.667)}


def _history(losses, margins):
    return [{"step": i + 1, "loss": loss, "dpo_loss": loss, "chosen_nll": 0.1, "reward_margin": m,
             "reward_accuracy": 1.0 if m > 0 else 0.0, "step_s": 0.5} for i, (loss, m) in enumerate(zip(losses, margins))]


def _stage(at, seconds, **info):
    return {"status": "done", "config_hash": "h", "at": at, "seconds": seconds, **info}


def write_run(folder, rounds: int) -> RunLayout:
    """A run folder with its starting policy's eval and `rounds` trained rounds (0, 1 or 2)."""
    run = RunLayout(folder)
    videos = []
    for vid, colour in COLOURS.items():
        frames = np.zeros((4, 12, 16, 3), np.uint8) + np.array(colour, np.uint8)
        videos.append({"video_id": vid, "uri": f"/clips/{vid}.mp4", "status": "ok", "duration_s": 2.0, "fps": 2.0,
                       "n_frames": 4, "width": 16, "height": 12, "frame_indices": [0, 1, 2, 3],
                       "frames_shape": list(frames.shape), "frames": frames.tobytes(), "warnings": []})
    write_table(pa.Table.from_pylist(videos, schema=VIDEOS), run.videos)
    prompts = [{"prompt_id": p, "video_id": v, "question": q, "reference_answer": ref, "split": "eval", "source": "file"}
               for p, v, q, ref in HELD]
    prompts += [{"prompt_id": f"t{i}", "video_id": "vt", "question": "?", "reference_answer": "x", "split": "train",
                 "source": "file"} for i in range(6)]
    write_table(pa.Table.from_pylist(prompts, schema=PROMPTS), run.prompts)
    stages = {"ingest": _stage(1, 5.0, rows_in=4, rows_ok=3, rows_quarantined=1, reasons={"undecodable": 1}),
              "questions": _stage(2, 0.1, rows=10, train=6, eval=4), "round_base/eval": _stage(3, 4.0)}
    for name in ["round_base"] + [f"round_{r}" for r in range(rounds)]:
        rd = run.base if name == "round_base" else run.round(int(name[-1]))
        rows = [{"prompt_id": p, "sample_idx": 0, "model": "m", "response": a, "n_tokens": 2, "finish_reason": "stop",
                 "round": EVALS[name][0], "score": s, "raw_score": s, "aspects": None, "explanation": e,
                 "parse_ok": s is not None, "attempts": 1, "judge_model": "j",
                 "status": "scored" if s is not None else "parse_failed"}
                for p, (a, s, e) in ANSWERS[name].items()]
        write_table(pa.Table.from_pylist(rows, schema=JUDGMENTS), rd.eval_judgments)
        write_table(pa.Table.from_pylist(rows, schema=JUDGMENTS).select(list(JUDGMENTS.names[:7])), rd.eval_answers)
        r, exact, score = EVALS[name]
        rd.eval.write_json({"round": r, "answers": 4, "exact_match": exact, "mean_score": score, "accuracy": 0.75})
    if rounds:
        stages |= {"round_0/pairs": _stage(4, 1.0, rows=3, prompts=6),
                   "round_0/train": _stage(5, 10.0, rows=3, history=_history([0.9, 0.8, 0.6], [0.0, 0.1, 0.3])),
                   "round_0/eval": _stage(6, 4.0)}
    if rounds == 2:
        stages |= {"round_1/pairs": _stage(7, 1.0, rows=5, prompts=6),
                   "round_1/train": _stage(8, 12.0, rows=5, history=_history([0.7, 0.5], [0.2, 0.6]),
                                           sync_fallback="no group"),
                   "round_1/eval": _stage(9, 4.0), "loop": {"status": "done", "config_hash": "h", "at": 10}}
    run.manifest.write_json({"name": "tiny", "started": 0, "stages": stages, "config": {
        "models": {"policy": "tiny-policy", "judge": "tiny-judge"}, "loop": {"rounds": 2},
        "train": {"finetune": "lora"}, "judge": {"kind": "score"}, "rebirth": {"enabled": False}}})
    return run


class Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.tags, self.text = [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "img":
            self.images.append(dict(attrs))

    def handle_data(self, data):
        self.text.append(data)


def parse_png(data: bytes) -> tuple[int, int]:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    image.load()  # decodes every pixel: a truncated file fails here
    return image.size


def check_images(run: RunLayout) -> tuple[str, Page]:
    """Every image report.md shows is a PNG of report_assets that parses, and report.html has exactly those, inlined."""
    markdown = run.report.read_text()
    shown = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)
    assert shown and all(src.startswith("report_assets/") for src in shown)
    assert sorted(p.name for p in run.report_assets.glob("*")) == sorted(src.split("/")[1] for src in shown)
    for src in shown:
        parse_png((run.dir / src).read_bytes())
    page = Page()
    page.feed(run.report_html.read_text())
    assert len(page.images) == len(shown)
    for img, src in zip(page.images, shown):
        assert img["src"].startswith("data:image/png;base64,")
        assert base64.b64decode(img["src"].split(",", 1)[1]) == (run.dir / src).read_bytes()
    assert set(page.tags) <= {"html", "head", "meta", "title", "style", "body", "main", "h1", "h2", "h3", "p", "ul",
                              "li", "table", "thead", "tbody", "tr", "th", "td", "img", "code", "strong", "em"}
    return markdown, page


def test_a_two_round_run_gets_tables_plots_and_a_gallery(tmp_path):
    run = write_report(write_run(tmp_path, rounds=2).dir)
    markdown, page = check_images(run)

    assert "Finished." in markdown
    assert "- videos: 3 kept of 4, 1 quarantined (1 undecodable)" in markdown
    assert "- questions: 6 train, 4 held out (3 with a reference answer)" in markdown
    # The per-round table (pipelines.apps.report.eval_table) with the figures of each eval.json.
    assert "| base | 4 | 0.667 | 3.250 | 0.750 |" in markdown and "| 1 | 4 | 1.000 | 4.667 | 0.750 |" in markdown
    assert "| round 0 | 3 | 0.900 → 0.600 | 0.300 | 1.000 | done | 10.0 |" in markdown
    assert "| round 1 | 2 | 0.700 → 0.500 | 0.600 | 1.000 | done | 12.0 |" in markdown
    assert "- round\\_1/train: weight sync fell back to the object store: no group" in markdown
    for figure in ("heldout", "judge_scores", "pairs", "training", "stage_times"):
        assert f"(report_assets/{figure}.png)" in markdown
    # The stage times in the order the stages ran.
    times = markdown[markdown.index("## Stage times"):]
    assert times.index("| ingest |") < times.index("| round_base/eval |") < times.index("| round_1/eval |")

    # Gallery: the two questions whose answer changed come first (v1-q0 before v2-q0 by prompt id), then a question
    # of a video not shown yet (v0) before v1's second one; base answers next to round 1's, with score and explanation.
    titles = re.findall(r"^### \d+\. (.*)$", markdown, flags=re.M)
    assert titles == ["What colour is the square?", "What is in the video?", "What colour is the background?",
                      "Which way does it move?"]
    first = markdown[markdown.index("### 1."):markdown.index("### 2.")]
    assert "reference answer: **green**" in first and "(report_assets/gallery_1.png)" in first
    assert "| base | blue | no | 1 | the caption says green |" in first
    assert "| round 1 | green | yes | 5 | the caption says green |" in first
    second = markdown[markdown.index("### 2."):markdown.index("### 3.")]
    assert "reference answer: none" in second and "| base | a square | - | 3 | - |" in second
    assert "| round 1 |" in second and "parse\\_failed" in second  # unscored: its status, not a score
    # The frame strip shows the clip's own frames: v1 is blue.
    strip = Image.open(io.BytesIO(run.report_images.frames(1).read_bytes())).convert("RGB")
    assert strip.getpixel((5, 5)) == (0, 0, 255) and strip.size[1] == 96

    # Model output is text in the page: no script, no image of its own, no table cell split by its "|".
    assert "script" not in page.tags and not any("evil.example" in img["src"] for img in page.images)
    assert HOSTILE in "".join(page.text)


def test_a_run_with_only_its_starting_eval_renders_what_exists(tmp_path):
    run = write_run(tmp_path, rounds=0)
    (run.report_assets / "gallery_9.png").write_bytes(b"an image of an earlier report")
    write_report(run.dir)
    markdown, _ = check_images(run)  # also: the earlier report's image is gone

    assert "In progress or interrupted: the latest stage recorded is `round_base/eval` (done)" in markdown
    assert "| base | 4 | 0.667 | 3.250 | 0.750 |" in markdown
    assert "No round has made its preference pairs yet." in markdown
    assert "(report_assets/training.png)" not in markdown and "(report_assets/judge_scores.png)" in markdown
    first = markdown[markdown.index("### 1."):markdown.index("### 2.")]
    assert first.count("| base |") == 1 and "| round" not in first  # the starting answers alone
    assert len(re.findall(r"^### ", markdown, flags=re.M)) == 4


def test_rebirth_a_skipped_training_and_a_half_done_round_render_too(tmp_path):
    run = write_run(tmp_path, rounds=2)
    manifest = run.manifest.read_json()
    stages = manifest["stages"]
    stages["round_1/train"] = _stage(8, 0.1, steps=0, skipped="no rows")  # no pairs: nothing trained, no history
    stages["rebirth/train"] = _stage(11, 7.0, targets=6, history=[{"step": 1, "loss": 1.5}, {"step": 2, "loss": 1.25}])
    stages["rebirth/eval"] = _stage(12, 4.0)
    manifest["config"]["rebirth"]["enabled"] = True
    rows = run.round(1).eval_judgments.glob("*.parquet")[0]
    run.rebirth.eval_judgments.mkdir()
    run.rebirth.eval_answers.mkdir()
    for table in (run.rebirth.eval_judgments, run.rebirth.eval_answers):  # the reborn policy answers as round 1 did
        (table / "part-0.parquet").write_bytes(rows.read_bytes())
    run.rebirth.eval.write_json({"round": 2, "answers": 4, "exact_match": 0.5})
    # Round 2 half done: its pairs written, its stage not recorded yet (the job is running or was stopped there).
    write_table(pa.Table.from_pylist([{"prompt_id": "t0"}, {"prompt_id": "t1"}]), run.round(2).pairs)
    stages["round_2/rollout_judge"] = {"status": "running", "config_hash": "h", "at": 9.5}
    run.manifest.write_json(manifest)

    markdown, _ = check_images(write_report(run.dir))
    assert "In progress or interrupted: the latest stage recorded is `round_2/rollout_judge` (running)" in markdown
    assert "| rebirth | 4 | 0.500 |" in markdown
    assert "| round 1 | 0 | - | - | - | no rows | 0.1 |" in markdown
    assert "| rebirth (SFT) | 2 | 1.500 → 1.250 | - | - | done | 7.0 |" in markdown
    assert "changed from base to rebirth first" in markdown
    assert "| rebirth | green | yes | 5 | the caption says green |" in markdown


def test_a_report_that_cannot_be_written_warns_and_does_not_stop_the_run(tmp_path, caplog):
    run = write_run(tmp_path, rounds=1)
    run.manifest.write_text("{not json")
    with caplog.at_level(logging.WARNING):
        refresh_report(run.dir)  # returns: the run goes on
    (record,) = [r for r in caplog.records if "run report could not be written" in r.getMessage()]
    assert record.exc_info and isinstance(record.exc_info[1], json.JSONDecodeError)
    with pytest.raises(FileNotFoundError, match="not a run folder"):
        write_report(tmp_path / "nothing here")


def test_text_is_literal_markdown_and_only_the_reports_images_are_inlined():
    assert text("a|b *c* [d](e) <f> `g`\nh") == r"a\|b \*c\* \[d\](e) \<f\> \`g\` h"
    assert text("x" * 10, limit=5) == "xxxx…"
    page = Page()
    page.feed(to_html(f"![ok](report_assets/a.png) ![x](http://evil.example/x.png) {text(HOSTILE)}",
                      {"report_assets/a.png": frame_strip(np.zeros((2, 4, 4, 3), np.uint8))}, title="<t>"))
    assert [img["src"][:22] for img in page.images] == ["data:image/png;base64,"]
    assert HOSTILE in "".join(page.text) and "script" not in page.tags


def test_gallery_prefers_changed_answers_then_one_question_per_video():
    questions = [{"prompt_id": f"v{v}-q{i}", "video_id": f"v{v}"} for v in range(3) for i in range(3)]
    before = {q["prompt_id"]: "red" for q in questions}
    after = {**before, "v2-q1": "blue", "v2-q2": "The red one.", "v0-q2": "two", "v1-q1": "Red."}
    # "Red." is the same answer as "red" (normalised as exact match is); "The red one." is not.
    assert [q["prompt_id"] for q in pick(questions, before, after, 6)] == [
        "v0-q2", "v2-q1", "v2-q2", "v1-q0", "v0-q0", "v0-q1"]
    assert pick(questions, before, after, 6) == pick(list(reversed(questions)), before, after, 6)
    assert parse_png(frame_strip(np.zeros((20, 30, 40, 3), np.uint8))) == (8 * 128 + 7 * 3, 96)


def test_the_gallery_chooses_among_the_lowest_held_out_prompt_ids_read_by_a_scan(tmp_path):
    import pyarrow.parquet as pq

    from pipelines.apps.run_report import count_rows, first_held_out
    from rlaif.storage import RunPath

    rows = [{"prompt_id": f"p{i:03d}", "video_id": f"v{i}", "question": "q", "reference_answer": None,
             "split": "eval" if i % 3 else "train", "source": "file"} for i in reversed(range(300))]
    (tmp_path / "prompts").mkdir()
    for part in range(3):  # three files, each in small row groups: the scan sees many batches
        pq.write_table(pa.Table.from_pylist(rows[part::3], schema=PROMPTS), tmp_path / "prompts" / f"{part}.parquet",
                       row_group_size=16)
    first = first_held_out(RunPath.of(tmp_path / "prompts"), 5)
    assert [r["prompt_id"] for r in first] == ["p001", "p002", "p004", "p005", "p007"]
    assert count_rows(RunPath.of(tmp_path / "prompts"), pc.field("split") == "eval") == 200
    assert first_held_out(RunPath.of(tmp_path / "nothing"), 5) == [] and count_rows(RunPath.of(tmp_path / "x")) == 0


def test_score_counts_add_up_batch_by_batch_into_the_shares_of_the_whole():
    scores = [1, 2.4, 2.6, None, 5, 7, 0.2]  # fractional scores count at their nearest integer, within 1-5
    counts = score_counts(scores[:3]) + score_counts(scores[3:])
    assert counts == Counter({1: 2, 2: 1, 3: 1, 5: 2, None: 1})
    shares, unscored = score_shares(counts)
    assert shares == pytest.approx([2 / 7, 1 / 7, 1 / 7, 0, 2 / 7]) and unscored == pytest.approx(1 / 7)
