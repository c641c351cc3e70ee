"""read_frames against a reference decoded another way: same frames, same count and order, whatever the decoder
thread count; a frame-size change mid-stream and unreadable files still give one clear line."""

from __future__ import annotations

import wave

import numpy as np
import pytest

from detectlab.core.errors import InputError
from detectlab.violence import data


def _moving(n: int, h: int, w: int) -> np.ndarray:
    """Frames that differ from each other: a blue ramp over time, a red block moving right, a green band, and
    fine black/white columns on top (area averaging makes them grey; point or bilinear sampling does not)."""
    f = np.zeros((n, h, w, 3), np.uint8)
    f[:, : h // 4, 1::2] = 255
    for i in range(n):
        f[i, ..., 2] = 40 + (180 * i) // max(1, n - 1)
        x = (i * (w - w // 4)) // max(1, n - 1)
        f[i, h // 4: h // 2, x: x + w // 4, 0] = 230
        f[i, 3 * h // 4:, :, 1] = 160
    return f


def _reference(path, size: int) -> np.ndarray:
    """Decoded another way: PyAV full-size RGB frames (no scaler reuse), then OpenCV's INTER_AREA."""
    import av
    import cv2

    with av.open(str(path)) as c:
        return np.stack([cv2.resize(fr.to_ndarray(format="rgb24"), (size, size), interpolation=cv2.INTER_AREA)
                         for fr in c.decode(video=0)])


def test_read_frames_equals_a_reference_decode(tmp_path, write_clip):
    """Fault caught: frames in BGR order, scaled from a crop or with the wrong size, dropped, duplicated or out of
    order (e.g. a reused scaler handing back the previous frame), point/bilinear sampling instead of area averaging,
    or the frame count differing from the file's."""
    p = write_clip(tmp_path / "m.mp4", _moving(24, 48, 64))
    out = data.read_frames(p, 20, threads=1)
    ref = _reference(p, 20)
    assert out.shape == ref.shape == (24, 20, 20, 3) and out.dtype == np.uint8
    diff = np.abs(out.astype(np.int16) - ref).mean(axis=(1, 2, 3))
    assert diff.mean() < 4.0 and diff.max() < 6.0, diff  # area averaging: 2.9 / 4.6; bilinear: 8.2 / 9.2
    # frame order: each frame is nearest to the reference frame of the same index, and clearly not to its neighbours
    d = np.abs(out[:, None].astype(np.int16) - ref[None]).mean(axis=(2, 3, 4))
    assert d.argmin(axis=1).tolist() == list(range(24))
    assert (np.sort(d, axis=1)[:, 1] > d.min(axis=1) + 1.0).all()


def test_threaded_decode_gives_the_same_frames(tmp_path, write_clip):
    """Fault caught: frame threading (used from 640x360 up) losing the frames still in flight at the end of the
    stream, reordering them, or decoding them differently from the one-thread decoder."""
    p = write_clip(tmp_path / "hd.mp4", _moving(20, 360, 640))
    one = data.read_frames(p, 24, threads=1)
    many = data.read_frames(p, 24, threads=3)
    assert one.shape == (20, 24, 24, 3)
    assert np.array_equal(one, many)
    assert np.array_equal(data.read_frames(p, 24, threads=3, max_frames=7), one[:7])


def test_max_frames_keeps_the_first_frames(tmp_path, write_clip):
    """Fault caught: ``max_frames`` keeping the wrong frames (from the end, every other one) or one too many/few."""
    p = write_clip(tmp_path / "m.mp4", _moving(18, 32, 40))
    full = data.read_frames(p, 16, threads=1)
    assert full.shape[0] == 18
    assert np.array_equal(data.read_frames(p, 16, max_frames=5, threads=1), full[:5])


def _raw_h264(path, w: int, h: int, n: int) -> bytes:
    import av

    with av.open(str(path), "w", format="h264") as c:
        s = c.add_stream("libx264", rate=15)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.options = {"preset": "ultrafast", "tune": "zerolatency"}
        for fr in _moving(n, h, w):
            for pkt in s.encode(av.VideoFrame.from_ndarray(fr, format="rgb24")):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    return path.read_bytes()


def test_frame_size_change_mid_stream_is_a_video_error(tmp_path):
    """Fault caught: a clip whose frame size changes mid-stream silently scaled to one size (the reused scaler
    would accept the new size) instead of being refused with a line naming both sizes."""
    p = tmp_path / "change.h264"
    p.write_bytes(_raw_h264(tmp_path / "a.h264", 48, 32, 8) + _raw_h264(tmp_path / "b.h264", 64, 48, 8))
    with pytest.raises(data.VideoError, match=r"frame size changes mid-stream \(48x32 -> 64x48\)"):
        data.read_frames(p, 16, threads=1)
    with pytest.raises(InputError) as e:
        data.read_clip_chunks(p, 16)
    assert str(p) in str(e.value) and "\n" not in str(e.value) and "48x32 -> 64x48" in str(e.value)


def test_unreadable_files_give_one_line(tmp_path):
    """Fault caught: a junk or video-less file raising a deep FFmpeg traceback or a multi-line message instead of
    one line naming the file and what is wrong."""
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00\x00\x00\x18ftypisom" + b"not a video\n" * 40)
    audio = tmp_path / "audio.mp4"  # a WAV file named .mp4: opens, but has no video stream
    with wave.open(str(audio), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(8000)
        w.writeframes(b"\0\0" * 800)
    for p, what in ((junk, "cannot decode"), (audio, "no video stream")):
        with pytest.raises(InputError) as e:
            data.read_clip_chunks(p, 16)
        line = str(e.value)
        assert line.startswith(f"{p}: {what}") and "expected a readable video" in line
        with pytest.raises(data.VideoError) as v:  # the reason load_clips logs and keeps for a skipped clip
            data.read_frames(p, 16)
        assert str(v.value).startswith(what) and "\n" not in str(v.value)


def test_decoder_threads_follow_detectlab_threads(monkeypatch, tmp_path, write_clip):
    """Fault caught: the reader ignoring the run's thread budget (DETECTLAB_THREADS), or a bad value of it
    crashing with a ValueError traceback instead of one line naming the setting."""
    monkeypatch.setenv("DETECTLAB_THREADS", "3")
    assert data.decoder_threads() == 3
    monkeypatch.delenv("DETECTLAB_THREADS")
    import os

    assert data.decoder_threads() == (os.cpu_count() or 1)
    p = write_clip(tmp_path / "a.mp4", n_frames=16)
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv("DETECTLAB_THREADS", bad)
        with pytest.raises(InputError, match=rf"^DETECTLAB_THREADS: is '{bad}' \(expected a whole number"):
            data.read_frames(p, 16)
