"""Synthetic H.264 clips whose content is known exactly: flat shapes moving over a flat background.

Tests and the demo need videos with a ground truth that is not itself a model's opinion: a caption that is true by
construction and questions whose answers are exact ("2", "red", "left"), so a judge, a policy or the whole loop can
be scored without a human. Everything here is deterministic: the same seed gives the same scene, the same frames
and (with the same libx264 build) the same bytes.

Design choices, and why:
- Flat, saturated colours from a small palette whose members are far apart in YUV, because yuv420p halves the
  chroma resolution and x264 quantises it; a shape's centre must still read back as its own colour after decoding.
- Objects are at least ~18 % of the frame wide and never overlap over the whole clip (their swept boxes are kept
  apart), so every object is visible in every frame and counting questions stay exact.
- Objects move linearly from a start to an end centre; a static object has start == end. The whole trajectory stays
  inside the frame, so "moves to the right" is literally true for every frame.
- Encoding is single-threaded libx264 with a fixed GOP, no B-frames and no mbtree: with B-frames + mbtree the
  output bytes varied from run to run here; without them the same seed gives the same file.

No Ray here: `pipelines/` turns these into Ray Data inputs.
"""
from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

# Named colours (RGB). Chosen to be far apart after BT.601 YUV conversion + 4:2:0 chroma subsampling.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 25, 25),
    "green": (25, 200, 40),
    "blue": (30, 60, 230),
    "yellow": (245, 225, 20),
    "white": (245, 245, 245),
    "black": (10, 10, 10),
    "gray": (128, 128, 128),
    "magenta": (225, 30, 225),
    "cyan": (25, 220, 230),
    "orange": (245, 140, 20),
}
BACKGROUND_COLOURS: tuple[str, ...] = ("black", "gray", "white", "blue")
OBJECT_COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow", "white", "magenta", "cyan", "orange")
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
MOTIONS: tuple[str, ...] = ("left", "right", "up", "down", "static")

# Unit direction per motion, in image coordinates (x to the right, y downwards).
_DIRECTION = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1), "static": (0, 0)}
_NUMBER_WORDS = {0: "no", 1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}
_PLURAL = {"circle": "circles", "square": "squares", "triangle": "triangles"}
_VERB = {  # (singular, plural) phrasing of each motion
    "left": ("moves to the left", "move to the left"),
    "right": ("moves to the right", "move to the right"),
    "up": ("moves up", "move up"),
    "down": ("moves down", "move down"),
    "static": ("stays still", "stay still"),
}

DEFAULT_RENDER = {"width": 112, "height": 112, "n_frames": 16, "fps": 8}


@dataclass
class SyntheticVideo:
    video_id: str
    path: Path
    truth: dict[str, Any]
    caption: str
    qa: list[dict[str, str]] = field(default_factory=list)

    def to_row(self) -> dict[str, Any]:
        """The row stored in truth.parquet (JSON text keeps nested truth schema-free and exact)."""
        return {
            "video_id": self.video_id,
            "uri": str(Path(self.path).resolve()),
            "caption": self.caption,
            "truth_json": json.dumps(self.truth, sort_keys=True),
            "qa_json": json.dumps(self.qa, sort_keys=True),
        }


# ----------------------------------------------------------------------------------------------------------- scene

def _as_rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def _swept_box(start, end, r, margin):
    (x0, y0), (x1, y1) = start, end
    return (min(x0, x1) - r - margin, min(y0, y1) - r - margin, max(x0, x1) + r + margin, max(y0, y1) + r + margin)


def _boxes_overlap(a, b) -> bool:
    return not (a[2] < b[0] or b[2] < a[0] or a[3] < b[1] or b[3] < a[1])


def make_scene(
    rng: np.random.Generator | int | None = None,
    *,
    width: int = 112,
    height: int = 112,
    n_frames: int = 16,
    fps: int = 8,
    min_objects: int = 1,
    max_objects: int = 3,
    p_duplicate: float = 0.4,
    object_size: float = 0.09,
) -> dict[str, Any]:
    """Draw a random scene description (the ground truth). Pure function of `rng`'s state and the options.

    With probability `p_duplicate` a new object copies the shape and colour of an earlier one (its motion is drawn
    afresh), so counting questions like "How many red circles are there?" have answers above 1. `object_size` is an
    object's half-size as a share of the frame's shorter side (0.09: 10 px of 112; the warm models see 0.2).
    """
    rng = _as_rng(rng)
    if width % 2 or height % 2:
        raise ValueError("width and height must be even (yuv420p)")
    if n_frames < 2:
        raise ValueError("n_frames must be >= 2 (motion needs two frames)")
    if not 1 <= min_objects <= max_objects:
        raise ValueError("need 1 <= min_objects <= max_objects")
    side = min(width, height)
    r = max(4, int(round(side * object_size)))     # half-size: 10 px at 112 by default
    travel = max(4, int(round(side * 0.35)))       # how far a moving object's centre goes over the clip
    margin = max(2, r // 3)                        # gap between swept boxes, so blurred edges never touch

    def pick(options):  # rng.choice(options), drawing the same number from the stream at a tenth of its cost
        return options[int(rng.integers(len(options)))]

    background = pick(BACKGROUND_COLOURS)
    palette = [c for c in OBJECT_COLOURS if c != background]
    n_objects = int(rng.integers(min_objects, max_objects + 1))
    objects: list[dict[str, Any]] = []
    boxes: list[tuple] = []
    attempts = 0
    while len(objects) < n_objects:
        attempts += 1
        if attempts > 400:                         # scene too crowded for this size: settle for fewer objects
            break
        if objects and rng.random() < p_duplicate:
            src = objects[int(rng.integers(len(objects)))]
            shape, colour = src["shape"], src["colour"]
        else:
            shape, colour = pick(SHAPES), pick(palette)
        motion = pick(MOTIONS)
        dx, dy = _DIRECTION[motion]
        lo_x, hi_x = r + 1, width - r - 2
        lo_y, hi_y = r + 1, height - r - 2
        # Pick the start so that the end (start + travel * direction) also stays inside the frame.
        sx = int(rng.integers(lo_x + max(0, -dx) * travel, hi_x - max(0, dx) * travel + 1))
        sy = int(rng.integers(lo_y + max(0, -dy) * travel, hi_y - max(0, dy) * travel + 1))
        start, end = (sx, sy), (sx + dx * travel, sy + dy * travel)
        box = _swept_box(start, end, r, margin)
        if any(_boxes_overlap(box, b) for b in boxes):
            continue
        boxes.append(box)
        objects.append({
            "shape": shape, "colour": colour, "rgb": list(COLOURS[colour]), "motion": motion,
            "radius": r, "start": list(start), "end": list(end),
        })
    if len(objects) < min_objects:
        raise ValueError(f"could not place {min_objects} non-overlapping objects in {width}x{height}")
    # Listed left to right (then top to bottom) by where they start: the caption then names them in an order a
    # viewer can see, not in the order they were drawn, so a captioner can learn it.
    objects.sort(key=lambda o: (o["start"][0], o["start"][1]))
    return {
        "background": background,
        "background_rgb": list(COLOURS[background]),
        "objects": objects,
        "fps": int(fps),
        "n_frames": int(n_frames),
        "size": {"width": int(width), "height": int(height)},
    }


def object_center(obj: dict[str, Any], t: int, n_frames: int) -> tuple[float, float]:
    """Centre (x, y) of `obj` in frame `t` (linear from start to end)."""
    a = t / (n_frames - 1)
    return (obj["start"][0] + a * (obj["end"][0] - obj["start"][0]),
            obj["start"][1] + a * (obj["end"][1] - obj["start"][1]))


def _shape_mask(shape: str, cx: float, cy: float, r: int, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    # Pixel centres are at integer coordinates; hard edges (no anti-aliasing) keep the colours flat.
    if shape == "circle":
        return (xs - cx) ** 2 + (ys - cy) ** 2 <= r * r
    if shape == "square":
        return (np.abs(xs - cx) <= r) & (np.abs(ys - cy) <= r)
    if shape == "triangle":
        # Upward-pointing isosceles triangle filling the 2r x 2r box: apex at the top centre, base at the bottom.
        top, bottom = cy - r, cy + r
        frac = (ys - top) / (2 * r)                # 0 at the apex, 1 at the base
        return (ys >= top) & (ys <= bottom) & (np.abs(xs - cx) <= frac * r)
    raise ValueError(f"unknown shape {shape!r}")


def render_frames(truth: dict[str, Any], indices: list[int] | None = None) -> np.ndarray:
    """Frames (T, H, W, 3) uint8 RGB for a scene from `make_scene`; with `indices`, only those frames of the clip, in
    that order (the same pixels as rendering all T and indexing them: a model build samples 8 of 16)."""
    w, h, T = truth["size"]["width"], truth["size"]["height"], truth["n_frames"]
    indices = list(range(T)) if indices is None else list(indices)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    frames = np.empty((len(indices), h, w, 3), dtype=np.uint8)
    frames[:] = np.asarray(COLOURS[truth["background"]], dtype=np.uint8)
    for i, t in enumerate(indices):
        for obj in truth["objects"]:
            cx, cy = object_center(obj, t, T)
            # Only the shape's box (plus a pixel of slack) can be inside it: the mask is computed there alone, on the
            # same coordinates, so the pixels are those of a mask over the whole frame at a fraction of its cost.
            r = obj["radius"]
            y0, y1 = max(0, int(cy - r) - 2), min(h, int(cy + r) + 3)
            x0, x1 = max(0, int(cx - r) - 2), min(w, int(cx + r) + 3)
            box = (slice(y0, y1), slice(x0, x1))
            frames[i][box][_shape_mask(obj["shape"], cx, cy, r, xs[box], ys[box])] = np.asarray(obj["rgb"], np.uint8)
    return frames


# ------------------------------------------------------------------------------------------------ caption and QA

def _groups(truth) -> list[tuple[str, str, str, int]]:
    """(colour, shape, motion, count) in order of first appearance, so captions are deterministic."""
    order: list[tuple[str, str, str]] = []
    counts: dict[tuple[str, str, str], int] = {}
    for o in truth["objects"]:
        k = (o["colour"], o["shape"], o["motion"])
        if k not in counts:
            order.append(k)
            counts[k] = 0
        counts[k] += 1
    return [(c, s, m, counts[(c, s, m)]) for c, s, m in order]


def _a(word: str) -> str:
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


def _count_phrase(n: int, colour: str, shape: str) -> str:
    if n == 1:
        return _a(f"{colour} {shape}")
    return f"{_NUMBER_WORDS.get(n, str(n))} {colour} {_PLURAL[shape]}"


def caption_for(truth: dict[str, Any]) -> str:
    """An exact English description, e.g. "A blue background with three objects. Two red circles move to the right.
    A yellow square stays still." A group that repeats an earlier colour+shape with another motion says "another"."""
    n = len(truth["objects"])
    parts = [f"{_a(truth['background']).capitalize()} background with {_NUMBER_WORDS.get(n, str(n))} "
             f"object{'s' if n != 1 else ''}."]
    seen: set[tuple[str, str]] = set()
    for colour, shape, motion, k in _groups(truth):
        verb = _VERB[motion][0 if k == 1 else 1]
        if (colour, shape) in seen:
            subject = (f"another {colour} {shape}" if k == 1
                       else f"{_NUMBER_WORDS.get(k, str(k))} other {colour} {_PLURAL[shape]}")
        else:
            subject = _count_phrase(k, colour, shape)
        seen.add((colour, shape))
        parts.append(f"{subject[0].upper()}{subject[1:]} {verb}.")
    return " ".join(parts)


def questions_for(truth: dict[str, Any]) -> list[dict[str, str]]:
    """Questions with short exact answers. Kinds: background, count, colour, shape, motion.

    A question is only asked when its answer is unambiguous: "What colour is the square?" only when every square in
    the scene has the same colour, "Which way does the red circle move?" only when all red circles move alike.
    Motion answers are one of left/right/up/down/static.
    """
    objs = truth["objects"]
    qa: list[dict[str, str]] = []

    def add(kind, q, a):
        qa.append({"question": q, "answer": str(a), "kind": kind})

    add("background", "What colour is the background?", truth["background"])
    add("count", "How many objects are there?", len(objs))

    pairs = []                                     # (colour, shape) in order of first appearance
    for o in objs:
        if (o["colour"], o["shape"]) not in pairs:
            pairs.append((o["colour"], o["shape"]))
    for colour, shape in pairs:
        add("count", f"How many {colour} {_PLURAL[shape]} are there?",
            sum(o["colour"] == colour and o["shape"] == shape for o in objs))
    shapes_present = [s for s in SHAPES if any(o["shape"] == s for o in objs)]
    for s in shapes_present:
        add("count", f"How many {_PLURAL[s]} are there?", sum(o["shape"] == s for o in objs))
    # One absent combination, so "0" is a possible answer and a model cannot just say "1".
    absent = [(c, s) for c in OBJECT_COLOURS for s in SHAPES
              if c != truth["background"] and (c, s) not in pairs]
    if absent:
        # Deterministic pick that varies across scenes without an RNG: a checksum of the scene's content.
        pick = zlib.crc32(json.dumps([[o["colour"], o["shape"], o["motion"]] for o in objs]).encode())
        c, s = absent[pick % len(absent)]
        add("count", f"How many {c} {_PLURAL[s]} are there?", 0)

    for s in shapes_present:
        colours = {o["colour"] for o in objs if o["shape"] == s}
        if len(colours) == 1:
            many = sum(o["shape"] == s for o in objs) > 1
            add("colour", f"What colour {'are the ' + _PLURAL[s] if many else 'is the ' + s}?", colours.pop())
    colours_present = []
    for o in objs:
        if o["colour"] not in colours_present:
            colours_present.append(o["colour"])
    for c in colours_present:
        shapes = {o["shape"] for o in objs if o["colour"] == c}
        if len(shapes) == 1:
            many = sum(o["colour"] == c for o in objs) > 1
            add("shape", f"What shape {'are the ' + c + ' objects' if many else 'is the ' + c + ' object'}?",
                shapes.pop())
    for colour, shape in pairs:
        group = [o for o in objs if o["colour"] == colour and o["shape"] == shape]
        motions = {o["motion"] for o in group}
        if len(motions) == 1:
            subject = f"the {colour} {_PLURAL[shape]}" if len(group) > 1 else f"the {colour} {shape}"
            add("motion", f"Which way {'do' if len(group) > 1 else 'does'} {subject} move "
                          f"(left, right, up, down, or static)?", motions.pop())
    return qa


# --------------------------------------------------------------------------------------------------------- writing

def write_video(frames: np.ndarray, path: str | Path, fps: int = 8, *, crf: int = 18, gop: int | None = None) -> Path:
    """Encode RGB frames (T, H, W, 3) uint8 as H.264 (libx264, yuv420p) in an .mp4.

    crf 18 keeps flat colours within a few levels. Single-threaded, no B-frames, no mbtree: the same frames then
    always give the same file (see the options below).
    The moov atom ends up after mdat (ffmpeg's default, no faststart): the broken-file corpus relies on that layout.
    """
    import av  # local import: only writers need PyAV

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be (T,H,W,3) uint8, got {frames.shape} {frames.dtype}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    T, h, w, _ = frames.shape
    with av.open(str(path), mode="w", format="mp4") as out:
        # ffmpeg's mp4 muxer writes no creation_time unless asked to, so the header bytes are reproducible too.
        stream = out.add_stream("libx264", rate=Fraction(int(fps), 1))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.codec_context.gop_size = int(gop or fps)   # a keyframe every second: cheap random access for decord
        stream.codec_context.thread_count = 1              # x264 threading is a documented source of variation
        # No B-frames and no macroblock-tree: with them this libx264 build gave run-to-run different bytes for the
        # same frames (measured: 2 of 12 clips, seemingly uninitialised lookahead memory). Without them, byte-stable.
        stream.codec_context.options = {"crf": str(crf), "preset": "medium", "x264-params": "bframes=0:mbtree=0"}
        for t in range(T):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frames[t]), format="rgb24")
            frame.pts = t
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


_SCENE_KEYS = ("width", "height", "n_frames", "fps", "min_objects", "max_objects", "p_duplicate", "object_size")
_WRITE_KEYS = ("crf", "gop")


def make_synthetic_video(video_id: str, out_dir: str | Path, rng, **opts) -> SyntheticVideo:
    """One clip: scene from `rng`, rendered, encoded to `out_dir/<video_id>.mp4`."""
    unknown = set(opts) - set(_SCENE_KEYS) - set(_WRITE_KEYS)
    if unknown:
        raise TypeError(f"unknown render options {sorted(unknown)}")
    scene_opts = {**DEFAULT_RENDER, **{k: v for k, v in opts.items() if k in _SCENE_KEYS}}
    truth = make_scene(rng, **scene_opts)
    path = write_video(render_frames(truth), Path(out_dir) / f"{video_id}.mp4", truth["fps"],
                       **{k: v for k, v in opts.items() if k in _WRITE_KEYS})
    return SyntheticVideo(video_id, path, truth, caption_for(truth), questions_for(truth))


def write_synthetic_corpus(out_dir: str | Path, n: int, seed: int = 0, **render_opts) -> list[SyntheticVideo]:
    """Write `n` clips `syn-0000.mp4`... and `truth.parquet` (video_id, uri, caption, truth_json, qa_json).

    Clip i draws from its own stream `default_rng([seed, i])`, so clip i is the same whatever `n` is.
    render_opts: width, height, n_frames, fps, min_objects, max_objects, p_duplicate (scene) and crf, gop (encoder).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    videos = [make_synthetic_video(f"syn-{i:04d}", out_dir, np.random.default_rng([seed, i]), **render_opts)
              for i in range(n)]
    rows = [v.to_row() for v in videos]
    table = pa.table({k: pa.array([r[k] for r in rows], pa.string())
                      for k in ("video_id", "uri", "caption", "truth_json", "qa_json")})
    tmp = out_dir / "truth.parquet.tmp"
    pq.write_table(table, tmp)
    tmp.replace(out_dir / "truth.parquet")         # atomic: a reader never sees half a table
    return videos


def read_truth(path: str | Path) -> dict[str, dict[str, Any]]:
    """truth.parquet (or its folder) -> {video_id: {"uri", "caption", "truth", "qa"}}."""
    import pyarrow.parquet as pq

    path = Path(path)
    if path.is_dir():
        path = path / "truth.parquet"
    out = {}
    for r in pq.read_table(path).to_pylist():
        out[r["video_id"]] = {"uri": r["uri"], "caption": r["caption"],
                              "truth": json.loads(r["truth_json"]), "qa": json.loads(r["qa_json"])}
    return out


__all__ = [
    "COLOURS", "BACKGROUND_COLOURS", "OBJECT_COLOURS", "SHAPES", "MOTIONS", "SyntheticVideo",
    "make_scene", "object_center", "render_frames", "caption_for", "questions_for", "write_video",
    "make_synthetic_video", "write_synthetic_corpus", "read_truth",
]
