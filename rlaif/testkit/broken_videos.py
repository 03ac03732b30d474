"""A corpus of broken "videos" derived from one good clip, for testing that ingest quarantines bad input.

Real video folders contain empty uploads, half-copied files, other formats with an .mp4 name, audio-only files,
directories, dead symlinks and files a decoder chokes on. Ingest must turn each of these into a quarantined row
with an error, never a dead pipeline. This module writes such inputs deterministically (same good clip + seed ->
same bytes); the returned corpus holds only those that really fail to decode.

Files that decode but are wrong are a second group, written to `decodable/` beside them (`write_decodable_corpus`,
listed by `decodable_cases`): frames cut short (fewer than the header declares), every frame one colour, the frame
size changing mid-stream, timestamps starting again mid-stream, a huge declared frame size over a tiny payload, and
the mutations of the first group that decord still decodes. Each case says what ingest must do with it (`expect`:
quarantined with which reason, or kept with which warning; the rule is in rlaif.decode and docs/faults.md).

How "fails" is decided: every candidate is opened with decord in a CHILD process (`probe_decode`), because decord
can SEGFAULT on a corrupt file (a crash would kill the caller). A candidate fails when opening raises, the reader
reports zero frames, reading the frames raises, or the child dies (signal) or hangs (alarm). A mutated file that
still decodes (a bit flip inside a P-frame often just glitches some pixels: ffmpeg conceals the error) is not
broken; it is left out of the returned list and moved to the decodable group (`decodable/`, kind
"glitched-but-decodable").

Decoding a fuzzed file in-process is exactly what this module exists to avoid; keep it that way.
"""
from __future__ import annotations

import gzip
import io
import json
import os
import signal
import struct
import subprocess
import sys
import tarfile
import zipfile
import zlib
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

# What each kind means (also the keys a test can group by).
BROKEN_KINDS: dict[str, str] = {
    "empty": "a zero-byte file",
    "random-bytes": "uniform random bytes of various sizes, no container at all",
    "truncated": "the good clip cut short (1 KB, 10..99 %, ftyp only): moov sits at the end, so the index is lost; "
                 "plus cuts of a faststart (moov-first) copy, where the index survives but frame data is missing",
    "head-cut": "the good clip with its first bytes removed (the ftyp box and beyond)",
    "header-zeroed": "the first N bytes overwritten with zeros",
    "atom-removed": "a top-level or sample-table MP4 box (moov, mdat, stsd, stco, stsz, avcC...) cut out, "
                    "parent sizes fixed",
    "atom-swapped": "moov and mdat exchanged or a box renamed, so chunk offsets or the index no longer match the data",
    "atom-corrupted": "an MP4 box's size or table entries set to impossible values (box size 3, 64-bit mdat size "
                      "2^62, chunk offsets past EOF, sample sizes 2^31-1, sample count 2^30)",
    "zero-frames": "a well-formed MP4 with no decodable video frames (audio-only, empty sample table, no video stream)",
    "huge-dimensions": "the header claims 60000x60000 (tkhd/avc1/SPS patched): ffmpeg refuses such frame sizes",
    "bit-flip": "random bit flips at a given density and seed (only those decord then fails on are kept)",
    "byte-run": "runs of zeros / 0xFF / random bytes overwritten at seeded offsets (only failing ones are kept)",
    "not-a-video": "text, JSON, an HTML error page, a real PNG or JPEG (whole or cut in half), named .mp4",
    "wrong-container": "the good clip inside a zip / tar / gzip, or a Matroska/AVI/MPEG-TS/Ogg/FLV magic followed "
                       "by garbage, named .mp4",
    "directory": "a directory named x.mp4",
    "dangling-symlink": "a symlink to a path that does not exist",
    "symlink-loop": "two symlinks pointing at each other (ELOOP)",
    "nonexistent": "a path that does not exist (nothing is written)",
    "permission-denied": "a copy of the good clip with mode 000; only kept when the current user really cannot read it "
                         "(root can read it, so as root it decodes and is excluded)",
    "fifo": "a named pipe with no writer: open() blocks forever (only with include_blocking=True: it hangs naive "
            "readers)",
    "decoder-crash": "a file that kills the decoding PROCESS (found by fuzzing, root-caused in decord 0.6.0): chunk "
                     "offsets far past EOF -> SIGSEGV when read through io.BytesIO; an stts sample count of ~2^32 -> "
                     "std::bad_alloc -> SIGABRT from a path too. See `crash_recipes`.",
    # Excluded from the returned list, only recorded in manifest.json:
    # Moved to the decodable group (decodable/), not in the returned list:
    "glitched-but-decodable": "a mutation above that decord still decodes (a truncation that only cut the index's "
                              "tail, a renamed or resized box ffmpeg reads past, a size patched where nothing reads "
                              "it): ingest keeps it, or quarantines it by its own checks, never as an internal error",
}

# The decodable group: files that decode but are wrong (write_decodable_corpus). Each case's `expect` is what ingest
# does with it: "quarantine:<reason>" or "keep:<warning code>[,<warning code>]".
DECODABLE_KINDS: dict[str, str] = {
    "short-stream": "a Matroska recording cut off part-way (a copy or a recorder that stopped): its header declares "
                    "16 frames (2 s), fewer are in the file -> kept, warning short_stream, sampled from the frames "
                    "that are there",
    "blank": "an H.264 clip whose every frame is one flat colour (black, blue) -> quarantined, blank_video",
    "resolution-change": "an MPEG-TS stream whose frame size changes half-way (smaller or larger), timestamps "
                         "continuous (as an adaptive-bitrate switch records): decord rescales every frame -> kept, "
                         "warning resolution_change",
    "timestamp-restart": "two MPEG-TS recordings joined byte for byte, the second's timestamps starting again at 0 "
                         "(same size, or also a new size): decord orders frames by timestamp, so a sampled frame 9 "
                         "is really frame 6 -> kept, warning timestamp_jump, the sampled frames decoded by PyAV in "
                         "stream order",
    "huge-declared-size": "the good clip's SPS, sample entry and tkhd patched to declare 4096x4096 or 8000x8000 (under "
                          "the 16384 limit) over its few-KB payload, a decompression bomb: decord decodes 16 frames of "
                          "concealment grey at 4096x4096 in seconds, and times out or aborts at 8000x8000 -> "
                          "quarantined before decoding, implausible_size",
    "glitched-but-decodable": BROKEN_KINDS["glitched-but-decodable"],
}


@dataclass
class BrokenCase:
    name: str
    path: Path
    kind: str
    description: str
    # How decord fared in a child process, from the path and from io.BytesIO(bytes); filled by verification.
    outcome: dict[str, Any] = field(default_factory=dict)
    # Decodable group only: what ingest does with it, "quarantine:<reason>" or "keep:<warning code>[,...]"; "" when
    # it is ingest's own checks that decide (glitched-but-decodable).
    expect: str = ""

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        return d


# --------------------------------------------------------------------------------------- decoding in a child process

# The child reads a JSON list of jobs on stdin and prints "S <i>" before and "D <i> <json>" after each one, so when
# it dies the parent knows which file killed it. SIGALRM (left at its default action: terminate) bounds a hang, and
# RLIMIT_AS turns a memory bomb into an allocation failure instead of swapping the machine.
_CHILD = r"""
import io, json, resource, signal, sys
jobs = json.loads(sys.stdin.read())
mem = jobs and jobs[0].get("mem_bytes")
if mem:
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
import numpy as np
import decord
for i, job in enumerate(jobs):
    print("S", i, flush=True)
    signal.alarm(int(job["timeout"]))
    res = {"status": "error", "n_frames": None, "error": ""}
    try:
        if job["source"] == "bytes":
            with open(job["path"], "rb") as f:
                src = io.BytesIO(f.read())
        else:
            src = job["path"]
        vr = decord.VideoReader(src, ctx=decord.cpu(0), num_threads=1)
        n = len(vr)
        res["n_frames"] = int(n)
        if n <= 0:
            res["status"] = "zero-frames"
        else:
            k = min(n, job["max_frames"])
            idx = np.linspace(0, n - 1, k).round().astype(np.int64).tolist()
            arr = vr.get_batch(idx).asnumpy()
            if arr.ndim != 4 or arr.shape[0] != k or arr.size == 0:
                res["status"] = "bad-shape"
                res["error"] = str(arr.shape)
            else:
                res["status"] = "decoded"
                res["shape"] = list(arr.shape)
    except BaseException as e:
        res["error"] = (type(e).__name__ + ": " + str(e))[:300]
    signal.alarm(0)
    print("D", i, json.dumps(res), flush=True)
"""


def probe_decode(
    paths: list[str | Path],
    *,
    source: str = "path",
    timeout_s: float = 10.0,
    max_frames: int = 32,
    mem_bytes: int | None = 8 << 30,
) -> list[dict[str, Any]]:
    """Decode each path with decord in child processes; never in this process.

    mem_bytes caps the child's address space (RLIMIT_AS) so a file that asks for absurd amounts of memory fails
    (as std::bad_alloc / MemoryError, reported as a crash or error) instead of swapping the machine.

    source: "path" (decord opens the file) or "bytes" (the child reads the bytes and decord gets io.BytesIO).
    Returns one dict per path: status in {"decoded", "error", "zero-frames", "bad-shape", "crash", "timeout"},
    plus n_frames, error and (for crashes) the signal. One child handles many files; after a crash a new child
    resumes at the next file, so a corpus costs a few interpreter starts, not one per file.
    """
    if source not in ("path", "bytes"):
        raise ValueError("source must be 'path' or 'bytes'")
    jobs = [{"path": os.fspath(p), "source": source, "timeout": max(1, int(round(timeout_s))),
             "max_frames": int(max_frames), "mem_bytes": mem_bytes} for p in paths]
    results: list[dict[str, Any] | None] = [None] * len(jobs)
    pos = 0
    while pos < len(jobs):
        batch = jobs[pos:]
        proc = subprocess.Popen([sys.executable, "-c", _CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, encoding="utf-8",
                                errors="replace")  # ffmpeg logs raw bytes from the file
        try:
            out, err = proc.communicate(json.dumps(batch), timeout=len(batch) * (timeout_s + 5) + 60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        started = None
        for line in out.splitlines():
            if line.startswith("S "):
                started = int(line.split()[1])
            elif line.startswith("D "):
                _, i, payload = line.split(" ", 2)
                results[pos + int(i)] = json.loads(payload)
                started = None
        if started is None:                       # the child finished everything it started
            if all(r is not None for r in results[pos:]):
                break
            # It died before starting the next job (e.g. at import): report the rest as errors, don't loop.
            msg = (err or "").strip().splitlines()[-1:] or [f"child exited with {proc.returncode}"]
            for j in range(pos, len(jobs)):
                if results[j] is None:
                    results[j] = {"status": "error", "n_frames": None, "error": f"probe child failed: {msg[0]}"}
            break
        rc = proc.returncode
        sig = -rc if rc is not None and rc < 0 else None
        status = "timeout" if sig in (signal.SIGALRM, signal.SIGKILL) else "crash"
        results[pos + started] = {"status": status, "n_frames": None, "signal": sig, "returncode": rc,
                                  "error": f"child died with {'signal ' + signal.Signals(sig).name if sig else rc}"}
        pos = pos + started + 1
    return results  # type: ignore[return-value]


def decodes_ok(outcome: dict[str, Any]) -> bool:
    return outcome.get("status") == "decoded"


# ------------------------------------------------------------------------------------------------ MP4 box surgery

_CONTAINERS = {b"moov": 0, b"trak": 0, b"mdia": 0, b"minf": 0, b"stbl": 0, b"edts": 0, b"dinf": 0, b"udta": 0,
               b"stsd": 8, b"avc1": 78, b"meta": 4, b"mp4a": 28}  # value: bytes between header and first child


def _boxes(data: bytes, start: int, end: int) -> list[tuple[bytes, int, int, int]]:
    """(type, offset, size, header_len) of the boxes in data[start:end]."""
    out = []
    off = start
    while off + 8 <= end:
        size, typ = struct.unpack(">I4s", data[off:off + 8])
        hdr = 8
        if size == 1:
            size = struct.unpack(">Q", data[off + 8:off + 16])[0]
            hdr = 16
        elif size == 0:
            size = end - off
        if size < hdr or off + size > end:
            break
        out.append((typ, off, size, hdr))
        off += size
    return out


def _find(data: bytes, path: list[str]) -> list[tuple[bytes, int, int, int]]:
    """The chain of boxes down `path` (e.g. ["moov", "trak", "tkhd"]); raises KeyError if absent."""
    chain = []
    start, end = 0, len(data)
    for name in path:
        hit = [b for b in _boxes(data, start, end) if b[0] == name.encode()]
        if not hit:
            raise KeyError("/".join(path))
        typ, off, size, hdr = hit[0]
        chain.append(hit[0])
        start, end = off + hdr + _CONTAINERS.get(typ, 0), off + size
    return chain


def _replace(data: bytes, path: list[str], new_box: bytes) -> bytes:
    """Replace the box at `path` by `new_box` (b"" removes it); ancestors' 32-bit sizes are fixed up.

    Only valid for boxes after mdat (moov here) or for top-level boxes whose move does not matter to the test:
    chunk offsets (stco) are NOT rewritten, which is sometimes exactly the breakage wanted.
    """
    chain = _find(data, path)
    _, off, size, _ = chain[-1]
    delta = len(new_box) - size
    buf = bytearray(data[:off] + new_box + data[off + size:])
    for _, a_off, a_size, a_hdr in chain[:-1]:
        if a_hdr != 8:
            raise ValueError("64-bit box sizes not supported here")
        struct.pack_into(">I", buf, a_off, a_size + delta)
    return bytes(buf)


def _box_bytes(data: bytes, path: list[str]) -> bytes:
    _, off, size, _ = _find(data, path)[-1]
    return data[off:off + size]


_STBL = ["moov", "trak", "mdia", "minf", "stbl"]


# ---------------------------------------------------------------------------------------- H.264 SPS size rewriting

class _Bits:
    def __init__(self, data: bytes):
        self.bits = "".join(f"{b:08b}" for b in data)
        self.pos = 0

    def u(self, n: int) -> int:
        v = int(self.bits[self.pos:self.pos + n], 2) if n else 0
        self.pos += n
        return v

    def ue(self) -> int:
        z = 0
        while self.bits[self.pos] == "0":
            z += 1
            self.pos += 1
        self.pos += 1
        return (1 << z) - 1 + self.u(z)


def _ue(v: int) -> str:
    b = f"{v + 1:b}"
    return "0" * (len(b) - 1) + b


def _unescape(nal: bytes) -> bytes:
    return nal.replace(b"\x00\x00\x03", b"\x00\x00")


def _escape(rbsp: bytes) -> bytes:
    out = bytearray()
    zeros = 0
    for b in rbsp:
        if zeros >= 2 and b <= 3:
            out.append(3)
            zeros = 0
        out.append(b)
        zeros = zeros + 1 if b == 0 else 0
    return bytes(out)


def _sps_skip_to_size(sps: bytes) -> _Bits:
    """A bit reader positioned at pic_width_in_mbs_minus1 of an H.264 SPS NAL."""
    rb = _Bits(_unescape(sps))
    rb.u(8)                                      # NAL header
    profile = rb.u(8)
    rb.u(16)                                     # constraint flags, level
    rb.ue()                                      # seq_parameter_set_id
    if profile in (100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135):
        if rb.ue() == 3:                         # chroma_format_idc
            rb.u(1)
        rb.ue(); rb.ue(); rb.u(1)                # bit depths, transform bypass
        if rb.u(1):
            raise ValueError("SPS with scaling matrices not supported")
    rb.ue()                                      # log2_max_frame_num_minus4
    poc = rb.ue()
    if poc == 0:
        rb.ue()
    elif poc == 1:
        raise ValueError("pic_order_cnt_type 1 not supported")
    rb.ue(); rb.u(1)                             # max_num_ref_frames, gaps
    return rb


def sps_size(sps: bytes) -> tuple[int, int]:
    """(width, height) in macroblocks x 16 declared by an H.264 SPS (frame_mbs_only streams, cropping ignored)."""
    rb = _sps_skip_to_size(sps)
    return (rb.ue() + 1) * 16, (rb.ue() + 1) * 16


def avcc_sps(mp4: bytes) -> bytes:
    """The (first) SPS NAL stored in an MP4's avcC box."""
    body = _box_bytes(mp4, _STBL + ["stsd", "avc1", "avcC"])[8:]
    ln = struct.unpack(">H", body[6:8])[0]
    return bytes(body[8:8 + ln])


def _sps_with_size(sps: bytes, width: int, height: int) -> bytes:
    """Rewrite pic_width_in_mbs_minus1 / pic_height_in_map_units_minus1 of an H.264 SPS NAL (frame_mbs_only)."""
    rb = _sps_skip_to_size(sps)
    before = rb.bits[:rb.pos]
    rb.ue(); rb.ue()                             # the two fields being replaced
    rest = rb.bits[rb.pos:].rstrip("0")[:-1]     # drop rbsp_stop_one_bit and padding, re-added below
    bits = before + _ue(width // 16 - 1) + _ue(height // 16 - 1) + rest + "1"
    bits += "0" * (-len(bits) % 8)
    rbsp = bytes(int(bits[i:i + 8], 2) for i in range(0, len(bits), 8))
    return rbsp[:1] + _escape(rbsp[1:])


def _patch_huge(data: bytes, w: int, h: int, *, tkhd: bool, entry: bool, sps: bool) -> bytes:
    out = data
    if sps:
        avcc = _box_bytes(out, _STBL + ["stsd", "avc1", "avcC"])
        body = bytearray(avcc[8:])
        n_sps = body[5] & 0x1F
        if n_sps != 1:
            raise ValueError("expected one SPS in avcC")
        ln = struct.unpack(">H", body[6:8])[0]
        new_sps = _sps_with_size(bytes(body[8:8 + ln]), w, h)
        body = body[:6] + struct.pack(">H", len(new_sps)) + new_sps + body[8 + ln:]
        out = _replace(out, _STBL + ["stsd", "avc1", "avcC"], struct.pack(">I", 8 + len(body)) + b"avcC" + bytes(body))
    if entry:                                    # VisualSampleEntry width/height are 16-bit at offset 8+24
        _, off, _, _ = _find(out, _STBL + ["stsd", "avc1"])[-1]
        buf = bytearray(out)
        struct.pack_into(">HH", buf, off + 8 + 24, w, h)
        out = bytes(buf)
    if tkhd:                                     # tkhd width/height are 16.16 fixed point, the last 8 bytes
        _, off, size, _ = _find(out, ["moov", "trak", "tkhd"])[-1]
        buf = bytearray(out)
        struct.pack_into(">II", buf, off + size - 8, w << 16, h << 16)
        out = bytes(buf)
    return out


def _top_level(data: bytes) -> dict[bytes, tuple[int, int]]:
    """First occurrence of each top-level box: type -> (offset, size). (Some files hold several mdat boxes.)"""
    top: dict[bytes, tuple[int, int]] = {}
    for t, off, size, _ in _boxes(data, 0, len(data)):
        top.setdefault(t, (off, size))
    return top


def _shift_chunk_offsets(data: bytes, delta: int) -> bytes:
    """Add `delta` to every 32-bit chunk offset (stco) of every track."""
    buf = bytearray(data)
    moov = _find(data, ["moov"])[-1]
    for typ, t_off, t_size, t_hdr in _boxes(data, moov[1] + moov[3], moov[1] + moov[2]):
        if typ != b"trak":
            continue
        sub = _find(data[t_off:t_off + t_size], ["trak", "mdia", "minf", "stbl", "stco"])[-1]
        off = t_off + sub[1]
        n = struct.unpack(">I", buf[off + 12:off + 16])[0]
        for i in range(n):
            o = struct.unpack(">I", buf[off + 16 + 4 * i:off + 20 + 4 * i])[0]
            struct.pack_into(">I", buf, off + 16 + 4 * i, o + delta)
    return bytes(buf)


def _moov_last(data: bytes, name: str = "good clip") -> bytes:
    """Check `data` is an MP4 with ftyp, mdat, moov and 32-bit stco tables; return it with moov after mdat.

    The truncation cases assume moov is at the end (ffmpeg's default layout): a cut then loses the index.
    """
    top = _top_level(data)
    if data[4:8] != b"ftyp" or not {b"mdat", b"moov"} <= set(top):
        raise ValueError(f"{name}: not an MP4 with ftyp, mdat and moov boxes")
    try:
        _shift_chunk_offsets(data, 0)
    except KeyError:
        raise ValueError(f"{name}: needs an MP4 whose tracks use 32-bit stco tables (e.g. a synthetic clip)") from None
    (mdat_off, _), (moov_off, moov_size) = top[b"mdat"], top[b"moov"]
    if moov_off > mdat_off:
        return data
    data = _shift_chunk_offsets(data, -moov_size)  # moov first: move it to the end, the data moves back
    return data[:moov_off] + data[moov_off + moov_size:] + data[moov_off:moov_off + moov_size]


def _faststart(data: bytes) -> bytes:
    """Move moov in front of mdat and shift every chunk offset by moov's size: the layout of a streamable mp4."""
    top = _top_level(data)
    (mdat_off, _), (moov_off, moov_size) = top[b"mdat"], top[b"moov"]
    if moov_off < mdat_off:
        return data
    data = _shift_chunk_offsets(data, moov_size)
    return data[:mdat_off] + data[moov_off:moov_off + moov_size] + data[mdat_off:moov_off] + data[moov_off + moov_size:]


def _chunk_offsets_to_co64(data: bytes, shift: int) -> bytes:
    """Replace stco by a 64-bit co64 table whose offsets are moved `shift` bytes further."""
    _, off, _, _ = _find(data, _STBL + ["stco"])[-1]
    n = struct.unpack(">I", data[off + 12:off + 16])[0]
    offs = struct.unpack(">" + "I" * n, data[off + 16:off + 16 + 4 * n])
    co64 = struct.pack(">I4sII", 16 + 8 * n, b"co64", 0, n) + b"".join(struct.pack(">Q", o + shift) for o in offs)
    return _replace(data, _STBL + ["stco"], co64)


def _stts_huge(data: bytes, entries: int = 8) -> bytes:
    """An stts table claiming `entries` x (2^32 - 1) samples; ffmpeg reports that sum as the stream's nb_frames."""
    box = struct.pack(">I4sII", 16 + 8 * entries, b"stts", 0, entries) + struct.pack(">II", 0xFFFFFFFF, 1) * entries
    return _replace(data, _STBL + ["stts"], box)


def crash_recipes(good: bytes) -> dict[str, tuple[str, bytes]]:
    """Deterministic files that crash decord 0.6.0's process (not just raise). name -> (description, bytes).

    Root causes, read in decord's source:
    - `AVIOBytesContext::seek` (used for io.BytesIO input) sets `size = file_size - offset` with size_t arithmetic and
      no bounds check, so a seek past EOF makes the next read memcpy from outside the buffer. Chunk offsets moved by
      2^62 point at a non-canonical address: SIGSEGV every time. Smaller overshoots read heap garbage (a crash or a
      silent wrong read, depending on memory layout). From a path, ffmpeg's own file I/O fails cleanly.
    - `VideoReader::IndexKeyframes` calls `frame_ts_.reserve(nb_frames)` with the container's claimed frame count;
      an stts table summing to ~2^35 samples makes that throw std::bad_alloc, which nothing catches: std::terminate,
      SIGABRT, from a path and from bytes. (With vm.overcommit_memory=1 the reservation may succeed instead.)
    """
    return {
        "crash-bytesio-co64-2p62": (
            "chunk offsets (co64) moved 2^62 past EOF: decord's BytesIO seek underflows, memcpy from a wild pointer "
            "-> SIGSEGV via io.BytesIO; clean DECORDError from a path", _chunk_offsets_to_co64(good, 1 << 62)),
        "crash-stts-nb-frames-2p35": (
            "stts claims 8 x (2^32-1) samples: decord reserves that many frame records, std::bad_alloc is uncaught "
            "-> SIGABRT (path and bytes)", _stts_huge(good)),
    }


# --------------------------------------------------------------------------------------------- candidate makers

def _flip_bits(data: bytes, rng: np.random.Generator, density: float, lo: int = 0, hi: int | None = None) -> bytes:
    hi = len(data) if hi is None else hi
    buf = bytearray(data)
    n = max(1, int(round((hi - lo) * 8 * density)))
    for p in rng.integers(lo * 8, hi * 8, size=n):
        buf[int(p) // 8] ^= 1 << (int(p) % 8)
    return bytes(buf)


def _overwrite_runs(data: bytes, rng: np.random.Generator, n_runs: int, run: int, fill: str,
                    lo: int = 0, hi: int | None = None) -> bytes:
    hi = len(data) if hi is None else hi
    buf = bytearray(data)
    for _ in range(n_runs):
        at = int(rng.integers(lo, max(lo + 1, hi - run)))
        chunk = {"zero": bytes(run), "ff": b"\xff" * run}.get(fill)
        if chunk is None:
            chunk = rng.integers(0, 256, size=run, dtype=np.uint8).tobytes()
        buf[at:at + run] = chunk[:max(0, len(buf) - at)]
    return bytes(buf)


def _image_bytes(codec: str, rng: np.random.Generator) -> bytes:
    """A real PNG or JPEG (encoded by PyAV: Pillow is not a dependency)."""
    import av

    ctx = av.CodecContext.create(codec, "w")
    ctx.width, ctx.height = 32, 32
    ctx.pix_fmt = "rgb24" if codec == "png" else "yuvj420p"
    ctx.time_base = Fraction(1, 25)
    img = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    frame = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format=ctx.pix_fmt)
    frame.pts = 0
    packets = list(ctx.encode(frame)) + list(ctx.encode(None))
    return b"".join(bytes(p) for p in packets)


def _audio_only_mp4(path: Path) -> None:
    import av

    with av.open(str(path), "w", format="mp4") as out:
        s = out.add_stream("aac", rate=16000)
        s.layout = "mono"
        t = np.arange(16000 // 2, dtype=np.float32) / 16000
        samples = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None, :]
        for i in range(0, samples.shape[1], 1024):
            fr = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[:, i:i + 1024]), format="fltp", layout="mono")
            fr.sample_rate = 16000
            fr.pts = i
            for p in s.encode(fr):
                out.mux(p)
        for p in s.encode(None):
            out.mux(p)


def _video_stream_no_packets(path: Path) -> None:
    import av

    with av.open(str(path), "w", format="mp4") as out:
        s = out.add_stream("libx264", rate=8)
        s.width, s.height, s.pix_fmt = 64, 64, "yuv420p"
        out.start_encoding()                     # header written, then close with no packet muxed


def _candidates(good: bytes, seed: int, include_blocking: bool) -> list[tuple[str, str, str, Any]]:
    """(name, kind, description, content) where content is bytes, a writer callable, or a filesystem action tag."""
    n = len(good)
    C: list[tuple[str, str, str, Any]] = []

    def rng(tag: str) -> np.random.Generator:
        # One stream per candidate: adding or dropping a candidate never changes the others' bytes.
        return np.random.default_rng([seed, zlib.crc32(tag.encode())])

    try:
        _find(good, _STBL + ["stsd", "avc1", "avcC"])
        has_avc = True
    except KeyError:
        has_avc = False

    C.append(("empty", "empty", "zero-byte file", b""))
    for size in (1, 7, 188, 1024, 4096, 65536, n):
        C.append((f"random-{size}b", "random-bytes", f"{size} uniform random bytes",
                  rng(f"random{size}").integers(0, 256, size=size, dtype=np.uint8).tobytes()))

    C.append(("trunc-1kb", "truncated", "first 1024 bytes of the good clip", good[:1024]))
    for pct in (10, 30, 50, 70, 90, 99):
        C.append((f"trunc-{pct}pct", "truncated", f"first {pct}% of the good clip", good[:n * pct // 100]))
    C.append(("trunc-minus-1", "truncated", "the good clip without its last byte", good[:-1]))
    ftyp_end = _boxes(good, 0, n)[0][2]
    C.append(("trunc-ftyp-only", "truncated", "only the ftyp box", good[:ftyp_end]))

    fast = _faststart(good)                     # moov first: a cut keeps the index but loses frame data
    for pct in (30, 60, 90):
        C.append((f"trunc-faststart-{pct}pct", "truncated",
                  f"first {pct}% of a faststart (moov-first) copy: index intact, frame data missing",
                  fast[:len(fast) * pct // 100]))

    for cut in (4, ftyp_end, 1024, n // 2):
        C.append((f"headcut-{cut}", "head-cut", f"the good clip without its first {cut} bytes", good[cut:]))

    for z in (4, 8, 16, 64, 256, 1024):
        C.append((f"zeroed-{z}", "header-zeroed", f"first {z} bytes set to 0", bytes(z) + good[z:]))

    top = {t.decode(): v for t, v in _top_level(good).items()}
    mdat_off, mdat_size = top["mdat"]
    moov_off, moov_size = top["moov"]
    moov, mdat = good[moov_off:moov_off + moov_size], good[mdat_off:mdat_off + mdat_size]
    C.append(("no-moov", "atom-removed", "moov box cut out (no index)", good[:moov_off] + good[moov_off + moov_size:]))
    C.append(("no-mdat", "atom-removed", "mdat box cut out (index points at nothing)",
              good[:mdat_off] + good[mdat_off + mdat_size:]))
    for box in ("stsd", "stco", "stsz", "stts", "stsc"):
        C.append((f"no-{box}", "atom-removed", f"{box} box removed from the sample table",
                  _replace(good, _STBL + [box], b"")))
    if has_avc:
        C.append(("no-avcC", "atom-removed", "avcC (SPS/PPS) removed from the sample entry",
                  _replace(good, _STBL + ["stsd", "avc1", "avcC"], b"")))
    C.append(("no-trak", "atom-removed", "the only trak removed from moov", _replace(good, ["moov", "trak"], b"")))

    C.append(("swap-moov-mdat", "atom-swapped", "moov moved before mdat without fixing chunk offsets",
              good[:mdat_off] + moov + mdat + good[moov_off + moov_size:]))
    C.append(("moov-renamed-free", "atom-swapped", "moov box type renamed to 'free'",
              good[:moov_off + 4] + b"free" + good[moov_off + 8:]))
    C.append(("mdat-renamed-free", "atom-swapped", "mdat box type renamed to 'free'",
              good[:mdat_off + 4] + b"free" + good[mdat_off + 8:]))
    C.append(("moov-twice-mdat-gone", "atom-swapped", "mdat replaced by a second copy of moov",
              good[:mdat_off] + moov + good[moov_off:]))

    def patched(off: int, fmt: str, *vals) -> bytes:
        buf = bytearray(good)
        struct.pack_into(fmt, buf, off, *vals)
        return bytes(buf)

    C.append(("moov-size-0xffffffff", "atom-corrupted", "moov size field 2^32-1 (past EOF)",
              patched(moov_off, ">I", 0xFFFFFFFF)))
    C.append(("moov-size-8", "atom-corrupted", "moov size field 8 (empty moov, children become top-level)",
              patched(moov_off, ">I", 8)))
    C.append(("moov-size-3", "atom-corrupted", "moov size field 3 (smaller than a header)", patched(moov_off, ">I", 3)))
    C.append(("mdat-size-huge64", "atom-corrupted", "mdat declares a 64-bit size of 2^62 bytes (moov unreachable)",
              good[:mdat_off] + struct.pack(">I4sQ", 1, b"mdat", 1 << 62) + good[mdat_off + 8:]))
    stco = _find(good, _STBL + ["stco"])[-1]
    stsz = _find(good, _STBL + ["stsz"])[-1]
    stts = _find(good, _STBL + ["stts"])[-1]
    n_chunks = struct.unpack(">I", good[stco[1] + 12:stco[1] + 16])[0]
    C.append(("stco-past-eof", "atom-corrupted", "every chunk offset moved 1 GB past the end of the file",
              patched(stco[1] + 16, ">" + "I" * n_chunks,
                      *[struct.unpack(">I", good[stco[1] + 16 + 4 * i:stco[1] + 20 + 4 * i])[0] + (1 << 30)
                        for i in range(n_chunks)])))
    n_samples = struct.unpack(">I", good[stsz[1] + 16:stsz[1] + 20])[0]
    C.append(("stsz-huge-samples", "atom-corrupted", "every sample size set to 2^31-1 bytes",
              patched(stsz[1] + 20, ">" + "I" * n_samples, *([0x7FFFFFFF] * n_samples))))
    C.append(("stsz-count-huge", "atom-corrupted", "stsz sample count 2^30 with the table unchanged",
              patched(stsz[1] + 16, ">I", 1 << 30)))
    C.append(("stts-count-0", "zero-frames", "stts time-to-sample table with zero entries",
              patched(stts[1] + 12, ">I", 0)))
    C.append(("stsz-count-0", "zero-frames", "stsz says the track has zero samples", patched(stsz[1] + 16, ">I", 0)))
    C.append(("audio-only", "zero-frames", "a valid mp4 with one AAC audio stream and no video (written by PyAV)",
              _audio_only_mp4))
    C.append(("video-no-packets", "zero-frames", "an mp4 with an H.264 video stream but no packets (written by PyAV)",
              _video_stream_no_packets))

    for name, (desc, data) in crash_recipes(good).items():
        C.append((name, "decoder-crash", desc, data))

    if has_avc:                                # the size patches edit the H.264 sample entry and its SPS
        for tag, kw in (("sps", dict(tkhd=False, entry=False, sps=True)),
                        ("sps-entry", dict(tkhd=False, entry=True, sps=True)),
                        ("all", dict(tkhd=True, entry=True, sps=True)),
                        ("entry", dict(tkhd=False, entry=True, sps=False)),
                        ("tkhd", dict(tkhd=True, entry=False, sps=False))):
            where = "+".join(k for k, v in kw.items() if v)
            C.append((f"huge-60000-{tag}", "huge-dimensions", f"{where} patched to declare 60000x60000",
                      _patch_huge(good, 60000, 60000, **kw)))
        C.append(("huge-32768x16-sps", "huge-dimensions", "SPS patched to declare 32768x16 (too wide)",
                  _patch_huge(good, 32768, 16, tkhd=True, entry=True, sps=True)))

    for density in (0.001, 0.01, 0.05):
        for s in range(4):
            C.append((f"flip-{density}-s{s}", "bit-flip",
                      f"bit flips at density {density} over the whole file, seed {s}",
                      _flip_bits(good, rng(f"flip{density}/{s}"), density)))
    for density in (0.002, 0.02):
        for s in range(3):
            C.append((f"flip-moov-{density}-s{s}", "bit-flip", f"bit flips at density {density} inside moov, seed {s}",
                      _flip_bits(good, rng(f"flipmoov{density}/{s}"), density, moov_off, moov_off + moov_size)))
    for fill in ("zero", "ff", "random"):
        for run, n_runs in ((64, 4), (512, 2)):
            C.append((f"run-{fill}-{run}x{n_runs}", "byte-run", f"{n_runs} runs of {run} {fill} bytes anywhere",
                      _overwrite_runs(good, rng(f"run{fill}{run}"), n_runs, run, fill)))
        C.append((f"run-moov-{fill}-32", "byte-run", f"one run of 32 {fill} bytes inside moov",
                  _overwrite_runs(good, rng(f"runmoov{fill}"), 1, 32, fill, moov_off, moov_off + moov_size)))

    C.append(("text", "not-a-video", "plain UTF-8 text", b"This is not a video.\nJust some words.\n" * 20))
    C.append(("json", "not-a-video", "a JSON document", json.dumps({"video": None, "frames": [1, 2, 3]}).encode()))
    C.append(("html", "not-a-video", "an HTML error page (a failed download saved as .mp4)",
              b"<!DOCTYPE html><html><head><title>404 Not Found</title></head><body>Not Found</body></html>\n"))
    png = _image_bytes("png", rng("png"))
    jpg = _image_bytes("mjpeg", rng("jpeg"))
    C.append(("png", "not-a-video", "a real 32x32 PNG image", png))
    C.append(("jpeg", "not-a-video", "a real 32x32 JPEG image", jpg))
    C.append(("png-truncated", "not-a-video", "a PNG cut in half", png[:len(png) // 2]))
    C.append(("jpeg-truncated", "not-a-video", "a JPEG cut in half", jpg[:len(jpg) // 2]))

    zbuf = io.BytesIO()
    with zipfile.ZipFile(zbuf, "w", zipfile.ZIP_DEFLATED) as z:
        zi = zipfile.ZipInfo("clip.mp4", date_time=(2020, 1, 1, 0, 0, 0))   # fixed date: deterministic bytes
        z.writestr(zi, good)
    C.append(("zip", "wrong-container", "a zip archive holding the good clip", zbuf.getvalue()))
    tbuf = io.BytesIO()
    with tarfile.open(fileobj=tbuf, mode="w", format=tarfile.USTAR_FORMAT) as t:
        ti = tarfile.TarInfo("clip.mp4")
        ti.size, ti.mtime = n, 0
        t.addfile(ti, io.BytesIO(good))
    C.append(("tar", "wrong-container", "a tar archive holding the good clip", tbuf.getvalue()))
    C.append(("gzip", "wrong-container", "the good clip gzip-compressed", gzip.compress(good, mtime=0)))
    garbage = rng("garbage").integers(0, 256, size=4096, dtype=np.uint8).tobytes()
    C.append(("mkv-garbage", "wrong-container", "an EBML/Matroska magic followed by garbage",
              b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\xf7\x81\x01\x42\x82\x84webm" + garbage))
    C.append(("avi-garbage", "wrong-container", "a RIFF/AVI header followed by garbage",
              b"RIFF" + struct.pack("<I", 4096) + b"AVI LIST" + garbage))
    C.append(("ogg-garbage", "wrong-container", "an Ogg page magic followed by garbage", b"OggS\x00\x02" + garbage))
    C.append(("flv-garbage", "wrong-container", "an FLV header followed by garbage",
              b"FLV\x01\x05\x00\x00\x00\x09" + garbage))
    ts = b"".join(b"\x47" + garbage[i * 187 % 3000:i * 187 % 3000 + 187] for i in range(20))
    C.append(("mpegts-garbage", "wrong-container",
              "188-byte packets with the MPEG-TS sync byte and garbage payload", ts))

    C.append(("dir.mp4", "directory", "a directory named x.mp4", "fs:dir"))
    C.append(("dangling.mp4", "dangling-symlink", "symlink to a file that does not exist", "fs:dangling"))
    C.append(("loop-a.mp4", "symlink-loop", "symlink loop loop-a.mp4 -> loop-b.mp4 -> loop-a.mp4", "fs:loop"))
    C.append(("missing.mp4", "nonexistent", "a path that does not exist", "fs:missing"))
    C.append(("no-read-permission.mp4", "permission-denied", "copy of the good clip with mode 000", "fs:chmod000"))
    if include_blocking:
        C.append(("fifo.mp4", "fifo", "a named pipe with no writer (open blocks)", "fs:fifo"))
    return C


def _materialise(out_dir: Path, name: str, content: Any, good: bytes) -> Path:
    path = out_dir / (name if name.endswith(".mp4") else f"{name}.mp4")
    if path.is_symlink() or path.is_file():
        if path.exists():
            os.chmod(path, 0o600)
        path.unlink()
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif callable(content):
        content(path)
    elif content == "fs:dir":
        path.mkdir(exist_ok=True)
    elif content == "fs:dangling":
        os.symlink("does-not-exist.mp4", path)      # relative target: the corpus folder can be moved
    elif content == "fs:loop":
        other = out_dir / "loop-b.mp4"
        if other.is_symlink() or other.exists():
            other.unlink()
        os.symlink("loop-b.mp4", path)
        os.symlink(path.name, other)
    elif content == "fs:missing":
        pass
    elif content == "fs:chmod000":
        path.write_bytes(good)
        os.chmod(path, 0)
    elif content == "fs:fifo":
        if not path.exists():
            os.mkfifo(path)
    else:
        raise ValueError(content)
    return path


# ------------------------------------------------------------------------------ the decodable group (wrong, decodes)

def _clip_frames(good: bytes) -> np.ndarray:
    """The good clip's frames (T, H, W, 3) RGB, by PyAV: the clip is the trusted input here, nothing fuzzed."""
    import av

    with av.open(io.BytesIO(good), "r") as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def _encode(frames: np.ndarray, fmt: str, fps: int = 8, first_pts: int = 0) -> bytes:
    """H.264 (libx264 as in synthetic_videos.write_video: one thread, no B-frames, no mbtree, a keyframe a second)
    in the container `fmt` ("mp4", "matroska", "mpegts"); bit-exact muxing, so the same frames give the same bytes."""
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt, options={"fflags": "+bitexact"}) as out:
        stream = out.add_stream("libx264", rate=Fraction(fps, 1))
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        stream.codec_context.gop_size = fps
        stream.codec_context.thread_count = 1
        stream.codec_context.options = {"crf": "18", "preset": "medium", "x264-params": "bframes=0:mbtree=0"}
        stream.codec_context.flags |= av.codec.context.Flags.bitexact
        for t, img in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            frame.pts = first_pts + t
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()


def _resized(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize (numpy only): a different frame size for the resolution-change segments."""
    ys = np.arange(height) * frames.shape[1] // height
    xs = np.arange(width) * frames.shape[2] // width
    return np.ascontiguousarray(frames[:, ys][:, :, xs])


def _marked(frames: np.ndarray) -> np.ndarray:
    """Each frame with its number shown: a black band along the top holding a white stripe whose position is the
    frame's number (`frame_number`), so a frame decoded from the wrong place in the stream shows the wrong number."""
    out = frames.copy()
    T, h, w, _ = out.shape
    band, width = max(4, h // 7), max(2, w // (2 * (T + 1)))
    out[:, :band] = 0
    for t in range(T):
        x = int(round((t + 1) * w / (T + 1)))
        out[t, :band, x - width // 2:x - width // 2 + width] = 255
    return out


def frame_number(frame: np.ndarray, n_frames: int) -> int:
    """The number a `_marked` frame shows, at any size it was scaled to."""
    h, w = frame.shape[:2]
    band = max(4, h // 7)
    column = frame[1:band - 1].astype(float).mean(axis=(0, 2))
    return int(round(float(np.argmax(column)) * (n_frames + 1) / w - 1))


def _decodable_candidates(good: bytes) -> list[tuple[str, str, str, bytes, str]]:
    """(name, kind, description, bytes, expect) of the deliberate decodable-but-wrong files."""
    frames = _clip_frames(good)
    T, h, w, _ = frames.shape
    C: list[tuple[str, str, str, bytes, str]] = []
    mkv = _encode(frames, "matroska")
    for pct in (60, 85):
        C.append((f"short-mkv-{pct}pct", "short-stream",
                  f"a Matroska copy of the good clip cut at {pct}% of its bytes: the header declares {T} frames "
                  f"(its duration at the clip's rate), fewer are in the file", mkv[:len(mkv) * pct // 100],
                  "keep:short_stream"))
    for colour, rgb in (("black", (0, 0, 0)), ("blue", (30, 60, 230))):
        flat = np.empty_like(frames)
        flat[...] = rgb
        C.append((f"blank-{colour}", "blank", f"{T} frames of flat {colour} RGB{rgb}, H.264 in MP4",
                  _encode(flat, "mp4"), "quarantine:blank_video"))
    half = T // 2
    for tag, (h2, w2) in (("shrinks", (h * 4 // 7 // 2 * 2, w * 6 // 7 // 2 * 2)), ("grows", (h * 2, w * 2))):
        marked = _marked(frames)
        # The second segment's timestamps go on from the first's: the frame size is the only discontinuity.
        first = _encode(marked[:half], "mpegts")
        second = _encode(_resized(marked[half:], h2, w2), "mpegts", first_pts=half)
        C.append((f"resolution-{tag}", "resolution-change",
                  f"an MPEG-TS stream (two segments, timestamps continuous): frames 0-{half - 1} at {w}x{h}, the rest "
                  f"at {w2}x{h2} (each frame shows its number, see frame_number)",
                  first + second, "keep:resolution_change"))
    for tag, (h2, w2) in (("same-size", (h, w)), ("resized", (h * 4 // 7 // 2 * 2, w * 6 // 7 // 2 * 2))):
        marked = _marked(frames)
        first, second = _encode(marked[:half], "mpegts"), _encode(_resized(marked[half:], h2, w2), "mpegts")
        C.append((f"timestamps-restart-{tag}", "timestamp-restart",
                  f"two MPEG-TS recordings joined byte for byte, both starting at timestamp 0: frames 0-{half - 1} at "
                  f"{w}x{h}, the rest at {w2}x{h2} (each frame shows its number, see frame_number)",
                  first + second, "keep:timestamp_jump" + (",resolution_change" if tag == "resized" else "")))
    for side in (4096, 8000):
        C.append((f"declares-{side}x{side}", "huge-declared-size",
                  f"the good clip ({len(good)} bytes) with SPS, sample entry and tkhd declaring {side}x{side}",
                  _patch_huge(good, side, side, tkhd=True, entry=True, sps=True), "quarantine:implausible_size"))
    return C


def write_decodable_corpus(out_dir: str | Path, good_video: str | Path, *, verify: bool = True,
                           timeout_s: float = 10.0) -> list[BrokenCase]:
    """Write the deliberate decodable-but-wrong files (DECODABLE_KINDS but glitched-but-decodable) derived from
    `good_video` into `out_dir`; each case's `expect` says what ingest does with it. With verify, each is decoded by
    decord in a child process (`outcome["path"]`), except the huge declared sizes: decoding those is the
    decompression bomb they are (`outcome["path"]["status"]` "not-probed"). Deterministic for a given good clip."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    good = _moov_last(Path(good_video).read_bytes(), str(good_video))
    cases = []
    for name, kind, desc, content, expect in _decodable_candidates(good):
        path = _materialise(out_dir, name, content, good)
        cases.append(BrokenCase(name=name, path=path, kind=kind, description=desc, expect=expect))
    if verify:
        probed = [c for c in cases if c.kind != "huge-declared-size"]
        for c, r in zip(probed, probe_decode([c.path for c in probed], source="path", timeout_s=timeout_s)):
            c.outcome = {"path": r}
        for c in cases:
            c.outcome = c.outcome or {"path": {"status": "not-probed", "n_frames": None,
                                               "error": "a decompression bomb: not handed to decord"}}
    return cases


def decodable_cases(out_dir: str | Path) -> list[BrokenCase]:
    """The decodable group that write_broken_corpus wrote beside the broken files (from out_dir/manifest.json)."""
    manifest = json.loads((Path(out_dir) / "manifest.json").read_text())
    return [BrokenCase(**{**c, "path": Path(c["path"])}) for c in manifest.get("decodable", [])]


def write_broken_corpus(
    out_dir: str | Path,
    good_video: str | Path,
    seed: int = 0,
    *,
    verify: bool = True,
    include_blocking: bool = False,
    timeout_s: float = 10.0,
    decodable: bool = True,
) -> list[BrokenCase]:
    """Write broken inputs derived from `good_video` (an H.264 .mp4 with moov after mdat, e.g. a synthetic clip).

    Returns only cases that fail to decode with decord from their path (checked in child processes; see
    `probe_decode`), each with `outcome = {"path": ..., "bytes": ...}`. With `decodable` (the default), the
    decodable group goes to `out_dir/decodable/`: the candidates that still decode (kind "glitched-but-decodable")
    are moved there, and `write_decodable_corpus` writes the deliberate ones; `decodable_cases(out_dir)` lists them
    (manifest.json, "decodable"). Without it, candidates that still decode are deleted and listed under "excluded",
    as is "permission-denied" when running as root (a readable copy of the good clip). verify=False skips decoding
    and returns every candidate (fast, but then some "broken" files may decode; no decodable group). Deterministic
    for a given good clip and seed.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    good = _moov_last(Path(good_video).read_bytes(), str(good_video))
    cases: list[BrokenCase] = []
    for name, kind, desc, content in _candidates(good, seed, include_blocking):
        path = _materialise(out_dir, name, content, good)
        cases.append(BrokenCase(name=name, path=path, kind=kind, description=desc))
    if not verify:
        return cases

    by_path = probe_decode([c.path for c in cases], source="path", timeout_s=timeout_s)
    by_bytes = probe_decode([c.path for c in cases], source="bytes", timeout_s=timeout_s)
    kept, excluded, glitched = [], [], []
    for c, rp, rb in zip(cases, by_path, by_bytes):
        c.outcome = {"path": rp, "bytes": rb}
        if decodes_ok(rp):
            if c.kind == "permission-denied":
                c.description += "; readable anyway because this process runs as root (permissions do not stop root)"
                excluded.append(c)
            else:
                c.description += f"; still decodes (a mutation of kind {c.kind})"
                c.kind = "glitched-but-decodable"
                (glitched if decodable else excluded).append(c)
        else:
            kept.append(c)
    for c in excluded:                            # an excluded file must not sit in the corpus folder
        if c.path.is_file():
            os.chmod(c.path, 0o600)
            c.path.unlink()
    group: list[BrokenCase] = []
    if decodable:
        group_dir = out_dir / "decodable"
        group = write_decodable_corpus(group_dir, good_video, timeout_s=timeout_s)
        for c in glitched:                        # moved out of the broken folder, into the decodable group
            c.path = c.path.rename(group_dir / c.path.name)
        group += glitched
    manifest = {"good_video": Path(good_video).name, "seed": seed, "cases": [c.to_json() for c in kept],
                "decodable": [c.to_json() for c in group], "excluded": [c.to_json() for c in excluded]}
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True))
    return kept


__all__ = ["BROKEN_KINDS", "DECODABLE_KINDS", "BrokenCase", "probe_decode", "decodes_ok", "crash_recipes",
           "write_broken_corpus", "write_decodable_corpus", "decodable_cases", "frame_number",
           "sps_size", "avcc_sps"]
