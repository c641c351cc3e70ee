"""Video readers: labelled folders of clips -> fixed-size RGB frames -> 16-frame chunks, cached.

Accepted layouts (label from the nearest folder name that names a class, else from the file name):
- ``fight/`` + ``noFight/`` (Surveillance Camera Fight dataset, optional ``videos.txt`` source map),
- RWF-2000: ``train|val/Fight|NonFight/*.avi``,
- Hockey Fights: one folder of ``fi*.avi`` / ``no*.avi`` files,
- any ``<label>/`` folders whose names say fight / violence or no-fight / non-violence / normal.

Every clip is decoded with PyAV, each frame scaled to ``size x size`` RGB (:func:`read_frames`) and kept
whole (:class:`ClipSet`): training draws 16-frame windows anywhere in a clip, evaluation cuts fixed
non-overlapping 16-frame chunks. A clip that cannot be decoded, has fewer frames than one chunk, or changes
frame size mid-stream is skipped with a log line and counted; a folder with no usable clip is an
:class:`InputError`. The frames of a folder are cached (uint8 ``.npy``) under ``$DETECTLAB_CACHE`` (default
``~/.cache/detectlab``) so a second run does not decode again.

``videos.txt`` (Aktı et al.) maps clips to their source YouTube video; splits use that source as the
group so that no source video spans train and test. Clips it does not list are their own group.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from detectlab.core import progress
from detectlab.core.errors import InputError, require_file

VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".mpg", ".mpeg", ".webm", ".m4v")
CHUNK = 16
FIGHT_NAMES = {"fight", "fights", "fighting", "violence", "violent", "violentflows", "yes", "fi"}
NONFIGHT_NAMES = {"nofight", "nonfight", "nofights", "nonfights", "noviolence", "nonviolence", "nonviolent",
                  "normal", "peaceful", "no", "nofi"}
CACHE_VERSION = 3


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def label_from_name(name: str) -> int | None:
    """1 for a fight folder/prefix name, 0 for a non-fight one, None when the name says neither."""
    n = _norm(name)
    if n in NONFIGHT_NAMES:
        return 0
    if n in FIGHT_NAMES:
        return 1
    return None


def label_from_file(stem: str) -> int | None:
    """Hockey-style file names: ``no*`` (nofi001, no12_xvid) -> 0, ``fi*`` -> 1."""
    s = stem.lower()
    if s.startswith("no"):
        return 0
    if s.startswith("fi"):
        return 1
    return None


@dataclass
class Clip:
    path: Path
    label: int
    group: str
    site: str = ""


def cache_root() -> Path:
    return Path(os.environ.get("DETECTLAB_CACHE", "~/.cache/detectlab")).expanduser() / "violence"


def parse_videos_txt(path: Path) -> dict[str, str]:
    """``videos.txt`` -> {clip stem: source}.

    A URL line starts a source; ``<clip>: <start> - <end>`` lines name its clips. A range line
    ``nofi062 - nofi076 : CamNet Dataset`` maps every clip of that numbered range to the named source.
    Other lines are skipped with a log line.
    """
    out: dict[str, str] = {}
    src = None
    bad = 0
    for i, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        if line.startswith(("http://", "https://")):
            src = line
            continue
        rng = re.match(r"^([A-Za-z_]+)(\d+)\s*-\s*([A-Za-z_]+)(\d+)\s*:\s*(.+)$", line)
        if rng and rng.group(1) == rng.group(3):
            a, b, width = int(rng.group(2)), int(rng.group(4)), len(rng.group(2))
            for n in range(min(a, b), max(a, b) + 1):
                out[f"{rng.group(1)}{n:0{width}d}"] = rng.group(5).strip()
            continue
        m = re.match(r"^([A-Za-z0-9_\-]+)\s*:", line)
        if m is None or src is None:
            bad += 1
            continue
        out[m.group(1)] = src
    if bad:
        progress.log(f"{path}: skipped {bad} line(s) that are neither a URL, a clip line nor a clip range")
    if not out:
        raise InputError(path, "names no clip", "URL lines followed by '<clip>: <start> - <end>' lines")
    return out


def find_clips(root: Path) -> list[Clip]:
    """List the labelled clips under `root` (see the module docstring for the layouts)."""
    root = Path(root)
    if root.is_file():
        raise InputError(root, "is a file", "a folder of labelled clips (fight/ + noFight/, train|val/Fight|NonFight, ...)")
    if not root.is_dir():
        raise InputError(root, "data folder does not exist", "a folder of labelled clips")
    groups: dict[str, str] = {}
    for vt in sorted(root.rglob("videos.txt")):
        groups.update(parse_videos_txt(vt))
    clips: list[Clip] = []
    unlabelled: list[Path] = []
    for p in sorted(root.rglob("*")):
        if not p.is_file() or p.suffix.lower() not in VIDEO_EXTS:
            continue
        rel = p.relative_to(root)
        label = None
        site = ""
        parts = rel.parts[:-1]
        for j in range(len(parts) - 1, -1, -1):
            label = label_from_name(parts[j])
            if label is not None:
                # a folder above the label folder that is not a split name is the site (camera) name
                above = [q for q in parts[:j] if _norm(q) not in ("train", "val", "test", "valid", "validation")]
                site = "/".join(above)
                break
        if label is None:
            label = label_from_file(p.stem)
        if label is None:
            unlabelled.append(p)
            continue
        group = groups.get(p.stem, f"clip:{rel.as_posix()}")
        clips.append(Clip(p, label, group, site))
    if unlabelled:
        raise InputError(unlabelled[0], f"cannot tell the label of {len(unlabelled)} video file(s)",
                         "clips in fight/noFight (or Fight/NonFight, violence/non-violence) folders, or named fi*/no*")
    if not clips:
        raise InputError(root, "no video files found", f"clips with one of the extensions {', '.join(VIDEO_EXTS)}")
    labels = {c.label for c in clips}
    if labels != {0, 1}:
        raise InputError(root, f"only one class present ({'fight' if 1 in labels else 'non-fight'})",
                         "both fight and non-fight clips")
    return clips


class VideoError(Exception):
    """A clip that cannot be used; the reason is one line."""


#: FFmpeg frame threading is used only from this frame area up (it costs more than it gives on small clips)
THREADED_FROM = 640 * 360


def decoder_threads() -> int:
    """Decoder threads per clip: ``DETECTLAB_THREADS`` when set (the run's thread budget), else all cores."""
    raw = os.environ.get("DETECTLAB_THREADS", "").strip()
    if not raw:
        return max(1, os.cpu_count() or 1)
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if n < 1:
        raise InputError("DETECTLAB_THREADS", f"is {raw!r}", "a whole number of threads >= 1")
    return n


def read_frames(path: Path, size: int, max_frames: int = 0, threads: int | None = None) -> np.ndarray:
    """Decode a clip to (T, size, size, 3) uint8 RGB. Raises VideoError for unreadable/changing clips.

    Each frame is scaled straight to ``size x size`` by FFmpeg's swscale with area averaging, one C pass from
    the decoder's YUV planes to small RGB, through ONE reusable scaler per clip running in the calling thread
    (``frame.reformat`` builds a new scaler, with its own thread pool, for every frame: about a quarter of the old
    reader's CPU time on the real clips, plus thread hand-offs per frame that a loaded machine makes wait). The H.264 decoder runs with ``threads`` (default :func:`decoder_threads`) FFmpeg frame threads on
    clips of at least 640x360 and one thread on smaller ones; ``DETECTLAB_THREADS=1`` makes the whole reader
    single-threaded. Frames are the same whatever the thread count, and 1.55/255 (mean over every frame of the
    252 real clips; worst clip 3.61) from ``VideoCapture.read`` + ``cvtColor`` + ``resize(INTER_AREA)``; on one
    thread 2.28x that loop's speed at OpenCV's default threads and 1.97x at one thread (the real clips, interleaved:
    benchmarks/bench_violence.py, docs/results/violence/bench-decode/).
    """
    import av
    from av.video.reformatter import Interpolation, VideoReformatter

    threads = decoder_threads() if threads is None else max(1, int(threads))
    frames = []
    first_shape = None
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoError("no video stream")
            stream = container.streams.video[0]
            cc = stream.codec_context
            if threads > 1 and (cc.width or 0) * (cc.height or 0) >= THREADED_FROM:
                stream.thread_type = "FRAME"
                cc.thread_count = threads
            else:
                cc.thread_count = 1
            scaler = VideoReformatter()
            for frame in container.decode(stream):
                shp = (frame.width, frame.height)
                if first_shape is None:
                    first_shape = shp
                elif shp != first_shape:
                    raise VideoError(f"frame size changes mid-stream ({first_shape[0]}x{first_shape[1]} -> "
                                     f"{shp[0]}x{shp[1]})")
                frames.append(scaler.reformat(frame, width=size, height=size, format="rgb24",
                                              interpolation=Interpolation.AREA, threads=1).to_ndarray())
                if max_frames and len(frames) >= max_frames:
                    break
    except VideoError:
        raise
    except (av.error.FFmpegError, OSError, ValueError, UnicodeDecodeError) as e:
        raise VideoError(f"cannot decode ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    if not frames:
        raise VideoError("no frames")
    return np.stack(frames)


def chunk_starts(n_frames: int, length: int = CHUNK, stride: int = CHUNK, max_chunks: int = 0) -> np.ndarray:
    """First frames of the `length`-frame windows of a clip of `n_frames` frames, every `stride` frames."""
    if n_frames < length:
        return np.zeros(0, np.int64)
    starts = np.arange(0, n_frames - length + 1, max(1, int(stride)), dtype=np.int64)
    return starts[:max_chunks] if max_chunks else starts


def chunk_frames(frames: np.ndarray, length: int = CHUNK, stride: int = CHUNK, max_chunks: int = 0) -> np.ndarray:
    """(T, H, W, 3) -> (N, length, H, W, 3) chunks starting every `stride` frames (no padding)."""
    starts = chunk_starts(frames.shape[0], length, stride, max_chunks)
    if len(starts) == 0:
        return np.zeros((0, length, *frames.shape[1:]), frames.dtype)
    return frames[starts[:, None] + np.arange(length)[None, :]]


def read_clip_chunks(path: Path, size: int, stride: int = CHUNK, max_chunks: int = 0) -> np.ndarray:
    """One clip -> (N, 16, size, size, 3) uint8; InputError when it cannot give one chunk."""
    p = require_file(path, "video")
    try:
        frames = read_frames(p, size, max_frames=(max_chunks - 1) * stride + CHUNK if max_chunks else 0)
    except VideoError as e:
        raise InputError(p, str(e), "a readable video (mp4/avi, H.264/MPEG-4)") from None
    ch = chunk_frames(frames, CHUNK, stride, max_chunks)
    if len(ch) == 0:
        raise InputError(p, f"has {len(frames)} frames, fewer than one {CHUNK}-frame chunk", f"at least {CHUNK} frames")
    return ch


@dataclass
class ClipSet:
    """Decoded clips: all frames in one array, each clip a run of it.

    ``frames`` (F, S, S, 3) uint8 (often a read-only memory map of the cache); clip ``i`` is
    ``frames[start[i]:start[i] + length[i]]`` with label ``label[i]`` (1 = fight) and source video ``group[i]``.
    Training draws 16-frame windows anywhere in a clip (overlap, temporal jitter); evaluation uses the fixed
    chunks of :meth:`chunk_index`. ``parent`` is the index of the original clip (differs from ``arange`` only
    for :meth:`segments`).
    """

    frames: np.ndarray
    start: np.ndarray
    length: np.ndarray
    label: np.ndarray
    group: np.ndarray
    clips: list[dict]
    parent: np.ndarray | None = None
    skipped: list[dict] = field(default_factory=list)
    source: str = ""
    cache: str = ""

    def __post_init__(self) -> None:
        self.start = np.asarray(self.start, np.int64)
        self.length = np.asarray(self.length, np.int64)
        self.label = np.asarray(self.label, np.int64)
        self.group = np.asarray(self.group).astype(str)
        if self.parent is None:
            self.parent = np.arange(len(self.start), dtype=np.int64)
        self.parent = np.asarray(self.parent, np.int64)

    def __len__(self) -> int:
        return len(self.start)

    @property
    def size(self) -> int:
        return int(self.frames.shape[1])

    def subset(self, idx) -> "ClipSet":
        """The clips `idx` (same frame array, no copy)."""
        idx = np.asarray(idx, np.int64).reshape(-1)
        return ClipSet(self.frames, self.start[idx], self.length[idx], self.label[idx], self.group[idx],
                       [self.clips[int(self.parent[i])] for i in idx] if self.clips else [], self.parent[idx],
                       self.skipped, self.source, self.cache)

    def materialize(self) -> "ClipSet":
        """A copy holding only these clips' frames in memory (what one client keeps)."""
        if len(self) == 0:
            return ClipSet(np.zeros((0, *self.frames.shape[1:]), np.uint8), self.start, self.length, self.label,
                           self.group, self.clips, self.parent, self.skipped, self.source, self.cache)
        idx = np.concatenate([np.arange(s, s + n) for s, n in zip(self.start, self.length)])
        new_start = np.concatenate([[0], np.cumsum(self.length)[:-1]])
        return ClipSet(np.ascontiguousarray(self.frames[idx]), new_start, self.length, self.label, self.group,
                       self.clips, self.parent, self.skipped, self.source, self.cache)

    def chunk_index(self, stride: int = CHUNK, max_chunks: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """(clip, first frame) of every fixed evaluation chunk: starts 0, stride, 2 stride, ... of each clip."""
        cl, st = [], []
        for i, n in enumerate(self.length):
            s = chunk_starts(int(n), CHUNK, stride, max_chunks)
            cl.append(np.full(len(s), i, np.int64))
            st.append(s)
        if not cl:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        return np.concatenate(cl), np.concatenate(st)

    def windows(self, clip: np.ndarray, first: np.ndarray) -> np.ndarray:
        """(N, 16, S, S, 3) uint8: the windows starting at frame `first` of clip `clip` (relative to the clip)."""
        base = self.start[np.asarray(clip, np.int64)] + np.asarray(first, np.int64)
        return self.frames[base[:, None] + np.arange(CHUNK)[None, :]]

    def chunks(self, stride: int = CHUNK, max_chunks: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(x (N, 16, S, S, 3), y (N,), clip (N,)) of the fixed chunks."""
        cl, st = self.chunk_index(stride, max_chunks)
        return self.windows(cl, st), self.label[cl], cl

    def n_chunks(self, stride: int = CHUNK) -> np.ndarray:
        """Fixed chunks per clip."""
        return np.asarray([len(chunk_starts(int(n), CHUNK, stride)) for n in self.length], np.int64)

    def segments(self) -> "ClipSet":
        """Every fixed (non-overlapping) 16-frame chunk as a clip of its own, its group unique to it.

        This is the *chunk split* of the paper's numbers: a random split of these segments puts chunks of one
        video on both sides (leaky; reported beside the source-video split, never instead of it).
        """
        cl, st = self.chunk_index(CHUNK)
        group = np.asarray([f"seg:{int(self.parent[c])}:{int(s)}" for c, s in zip(cl, st)])
        return ClipSet(self.frames, self.start[cl] + st, np.full(len(cl), CHUNK), self.label[cl], group, self.clips,
                       self.parent[cl], self.skipped, self.source, self.cache)

    def counts(self) -> dict[str, int]:
        n = self.n_chunks()
        return {"clips": len(self), "fight_clips": int((self.label == 1).sum()),
                "nonfight_clips": int((self.label == 0).sum()), "chunks": int(n.sum()),
                "fight": int(n[self.label == 1].sum()), "nonfight": int(n[self.label == 0].sum()),
                "frames": int(self.length.sum()), "skipped": len(self.skipped)}


@dataclass
class ClientData:
    """One client's clips: training, validation (source videos of its training side) and held-out test."""

    train: ClipSet
    val: ClipSet
    test: ClipSet

    def counts(self) -> dict[str, int]:
        out = {}
        for part in ("train", "val", "test"):
            c = getattr(self, part)
            n = c.n_chunks()
            out.update({f"{part}_fight": int(n[c.label == 1].sum()), f"{part}_nonfight": int(n[c.label == 0].sum()),
                        f"{part}_clips": len(c)})
        return out


def _cache_key(clips: list[Clip], size: int, max_frames: int) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([CACHE_VERSION, size, max_frames]).encode())
    for c in clips:
        st = c.path.stat()
        h.update(f"{c.path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{c.label}|{c.group}|{c.site}".encode())
    return h.hexdigest()[:20]


def load_clips(root: Path, size: int = 64, cache_dir: Path | None = None, max_frames: int = 0) -> ClipSet:
    """Decode (or read back from the cache) every clip under `root` at ``size x size``."""
    root = Path(root)
    clips = find_clips(root)
    key = _cache_key(clips, size, max_frames)
    cdir = (Path(cache_dir) if cache_dir else cache_root()) / key
    meta_p = cdir / "meta.json"
    if meta_p.exists():
        try:
            meta = json.loads(meta_p.read_text())
            frames = np.load(cdir / "frames.npy", mmap_mode="r")
            kept = meta["clips"]
            length = np.asarray([c["n_frames"] for c in kept], np.int64)
            start = np.concatenate([[0], np.cumsum(length)[:-1]]).astype(np.int64)
            if frames.shape[0] != length.sum():
                raise ValueError("frame count does not match the clip table")
            progress.log(f"violence data: {len(kept)} clips ({int(length.sum())} frames) read back from cache {cdir}")
            return ClipSet(frames, start, length, [c["label"] for c in kept], [c["group"] for c in kept], kept,
                           None, meta["skipped"], str(root), str(cdir))
        except (OSError, ValueError, KeyError, json.JSONDecodeError):
            progress.log(f"violence data: cache {cdir} unreadable, decoding again")
    xs, kept, skipped = [], [], []
    for c in progress.track(clips, f"decode {len(clips)} clips"):
        try:
            frames = read_frames(c.path, size, max_frames=max_frames)
        except VideoError as e:
            skipped.append({"path": str(c.path), "reason": str(e)})
            progress.log(f"violence data: skipped {c.path}: {e}")
            continue
        if len(frames) < CHUNK:
            skipped.append({"path": str(c.path), "reason": f"{len(frames)} frames < {CHUNK}"})
            progress.log(f"violence data: skipped {c.path}: {len(frames)} frames, fewer than {CHUNK}")
            continue
        xs.append(frames)
        kept.append({"path": str(c.path), "label": c.label, "group": c.group, "site": c.site,
                     "n_frames": int(len(frames))})
    if skipped:
        progress.log(f"violence data: skipped {len(skipped)} of {len(clips)} clips (see log lines above)")
    if not kept:
        raise InputError(root, f"none of the {len(clips)} clips gave a {CHUNK}-frame chunk",
                         f"readable videos with at least {CHUNK} frames")
    if len({c["label"] for c in kept}) < 2:
        raise InputError(root, "after skipping unusable clips only one class is left", "both fight and non-fight clips")
    frames = np.concatenate(xs)
    length = np.asarray([c["n_frames"] for c in kept], np.int64)
    start = np.concatenate([[0], np.cumsum(length)[:-1]]).astype(np.int64)
    cached = ""
    try:
        cdir.mkdir(parents=True, exist_ok=True)
        tmp = cdir / "frames.tmp.npy"
        np.save(tmp, frames)
        tmp.replace(cdir / "frames.npy")
        meta_p.write_text(json.dumps({"clips": kept, "skipped": skipped, "root": str(root), "size": size}))
        cached = str(cdir)
    except OSError as e:
        progress.log(f"violence data: could not write the frame cache {cdir}: {e}")
    cs = ClipSet(frames, start, length, [c["label"] for c in kept], [c["group"] for c in kept], kept, None,
                 skipped, str(root), cached)
    n = cs.counts()
    progress.log(f"violence data: {n['clips']} clips ({n['fight_clips']} fight), {n['frames']} frames, "
                 f"{n['chunks']} chunks of {CHUNK} from {root}")
    return cs
