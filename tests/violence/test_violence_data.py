"""Video reader, chunking, layouts, videos.txt groups, cache, and bad input (through the CLI too)."""

from __future__ import annotations

import numpy as np
import pytest

from detectlab.core.errors import InputError
from detectlab.violence import data


def test_chunk_frames_by_hand():
    frames = np.arange(40)[:, None, None, None] * np.ones((1, 2, 2, 3), np.int64)
    ch = data.chunk_frames(frames)  # non-overlapping: starts 0 and 16 (frames 32..39 are left over)
    assert ch.shape == (2, 16, 2, 2, 3)
    assert ch[0, :, 0, 0, 0].tolist() == list(range(16)) and ch[1, 0, 0, 0, 0] == 16
    ch8 = data.chunk_frames(frames, stride=8)
    assert [c[0, 0, 0, 0] for c in ch8] == [0, 8, 16, 24]
    assert data.chunk_frames(frames, stride=8, max_chunks=3).shape[0] == 3
    assert data.chunk_frames(frames[:15]).shape == (0, 16, 2, 2, 3)


def test_read_frames_resizes_real_mp4(tmp_path, write_clip):
    frames = np.zeros((20, 40, 48, 3), np.uint8)
    frames[..., 0] = 200  # red
    frames[:, :, 24:, 2] = 180  # right half also blue
    p = write_clip(tmp_path / "a.mp4", frames)
    out = data.read_frames(p, 32)
    assert out.shape == (20, 32, 32, 3) and out.dtype == np.uint8
    assert abs(float(out[:, :, :12, 0].mean()) - 200) < 12 and float(out[:, :, :12, 2].mean()) < 15
    assert abs(float(out[:, :, 20:, 2].mean()) - 180) < 12
    ch = data.read_clip_chunks(p, 32)
    assert ch.shape == (1, 16, 32, 32, 3)


def test_labels_from_the_accepted_layouts(tmp_path, write_clip):
    src = write_clip(tmp_path / "src.mp4", n_frames=16)
    layouts = {
        "rwf": ["train/Fight/a.mp4", "train/NonFight/b.mp4", "val/Fight/c.mp4", "val/NonFight/d.mp4"],
        "hockey": ["fi1_xvid.mp4", "no1_xvid.mp4", "fi2_xvid.mp4"],
        "labels": ["Violence/v1.mp4", "non_violence/n1.mp4", "normal/n2.mp4"],
        "akti": ["fight/fi001.mp4", "noFight/nofi001.mp4"],
    }
    want = {"rwf": [1, 0, 1, 0], "hockey": [1, 0, 1], "labels": [1, 0, 0], "akti": [1, 0]}
    for name, files in layouts.items():
        for f in files:
            (tmp_path / name / f).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / name / f).write_bytes(src.read_bytes())
        clips = {c.path.relative_to(tmp_path / name).as_posix(): c.label for c in data.find_clips(tmp_path / name)}
        assert [clips[f] for f in files] == want[name], name


def test_unlabelled_and_one_class_folders_are_input_errors(tmp_path, write_clip):
    write_clip(tmp_path / "x" / "cats" / "a.mp4", n_frames=16)
    with pytest.raises(InputError, match="cannot tell the label"):
        data.find_clips(tmp_path / "x")
    write_clip(tmp_path / "y" / "fight" / "a.mp4", n_frames=16)
    with pytest.raises(InputError, match="only one class"):
        data.find_clips(tmp_path / "y")
    with pytest.raises(InputError, match="no video files"):
        (tmp_path / "z").mkdir()
        data.find_clips(tmp_path / "z")


def test_videos_txt_groups_and_ranges(tmp_path):
    p = tmp_path / "videos.txt"
    p.write_text("https://y/1\r\nfi001: 0.13.50 - 0.15.60\r\nnofi002: 1.0 - 1.2\r\nhttps://y/2\nfi003: 0 - 1\n\n"
                 "nofi009 - nofi011 : CamNet Dataset\nsome note\n")
    g = data.parse_videos_txt(p)
    assert g == {"fi001": "https://y/1", "nofi002": "https://y/1", "fi003": "https://y/2",
                 "nofi009": "CamNet Dataset", "nofi010": "CamNet Dataset", "nofi011": "CamNet Dataset"}


def test_cache_is_reused_without_decoding(tmp_path, syn_root, monkeypatch):
    """Fault caught: a second run decoding every clip again, or reading back other frames than it wrote."""
    first = data.load_clips(syn_root, size=16, cache_dir=tmp_path)
    assert first.cache and (tmp_path / first.cache.split("/")[-1] / "frames.npy").exists()

    def boom(*a, **k):
        raise AssertionError("decoded again")

    monkeypatch.setattr(data, "read_frames", boom)
    second = data.load_clips(syn_root, size=16, cache_dir=tmp_path)
    assert np.array_equal(np.asarray(second.frames), np.asarray(first.frames)) and second.clips == first.clips
    assert np.array_equal(second.start, first.start) and np.array_equal(second.group, first.group)


def test_clipset_chunks_windows_and_segments():
    """Fault caught: evaluation chunks that overlap or run past a clip, windows read from another clip after
    subset/materialize, or a chunk split whose items share a group (then it would not be a chunk-level split)."""
    lengths = [40, 16, 33]
    n = sum(lengths)
    frames = np.broadcast_to((np.arange(n) % 256).astype(np.uint8)[:, None, None, None], (n, 2, 2, 3)).copy()
    start = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    cs = data.ClipSet(frames, start, lengths, [1, 0, 1], ["a", "b", "a"], [{"path": p} for p in "xyz"])
    cl, st = cs.chunk_index()
    assert list(zip(cl.tolist(), st.tolist())) == [(0, 0), (0, 16), (1, 0), (2, 0), (2, 16)]
    assert cs.n_chunks().tolist() == [2, 1, 2] and cs.counts()["chunks"] == 5 and cs.counts()["fight"] == 4
    x, y, c = cs.chunks()
    assert x.shape == (5, 16, 2, 2, 3) and y.tolist() == [1, 1, 0, 1, 1]
    assert x[4, 0, 0, 0, 0] == 40 + 16 + 16 and x[4, -1, 0, 0, 0] == 40 + 16 + 31
    sub = cs.subset([2]).materialize()
    assert sub.frames.shape[0] == 33 and sub.start.tolist() == [0] and sub.parent.tolist() == [2]
    assert np.array_equal(sub.windows(np.array([0]), np.array([5])), cs.windows(np.array([2]), np.array([5])))
    seg = cs.segments()
    assert len(seg) == 5 and len(set(seg.group.tolist())) == 5 and seg.parent.tolist() == [0, 0, 1, 2, 2]
    assert seg.length.tolist() == [16] * 5 and np.array_equal(seg.chunks()[0], x)


def test_synthetic_clips_are_real_mp4_with_both_classes(syn_clips):
    """Fault caught: built-in data that is not decodable mp4, has one class, or whose fights do not move more."""
    c = syn_clips.counts()
    assert c["clips"] == 24 and c["fight"] == c["nonfight"] == 24 and c["skipped"] == 0
    assert syn_clips.frames.shape[1:] == (32, 32, 3)
    assert len(set(syn_clips.group.tolist())) == 6  # 2 sites x 3 sources
    x, y, _ = syn_clips.chunks()
    motion = np.abs(np.diff(np.asarray(x, np.float32), axis=1)).mean((1, 2, 3, 4))
    assert motion[y == 1].mean() > 1.3 * motion[y == 0].mean()


def test_bad_clips_are_skipped_and_counted(tmp_path, write_clip):
    """Fault caught: an unreadable, empty or too-short clip crashing the run or silently giving chunks."""
    root = tmp_path / "d"
    for i in range(2):
        write_clip(root / "fight" / f"fi{i}.mp4", n_frames=20, color=(200, 0, 0))
        write_clip(root / "noFight" / f"nofi{i}.mp4", n_frames=20, color=(0, 0, 200))
    (root / "fight" / "empty.mp4").write_bytes(b"")
    (root / "fight" / "junk.mp4").write_bytes(b"this is not a video" * 50)
    write_clip(root / "noFight" / "short.mp4", n_frames=10)
    cs = data.load_clips(root, size=16, cache_dir=tmp_path / "c")
    assert len(cs) == 4 and len(cs.skipped) == 3 and cs.counts()["chunks"] == 4
    reasons = {s["path"].split("/")[-1]: s["reason"] for s in cs.skipped}
    assert "10 frames" in reasons["short.mp4"] and "decode" in reasons["junk.mp4"]
    with pytest.raises(InputError, match="fewer than one 16-frame chunk"):
        data.read_clip_chunks(root / "noFight" / "short.mp4", 16)
    with pytest.raises(InputError, match="cannot decode|no frames"):
        data.read_clip_chunks(root / "fight" / "junk.mp4", 16)


def test_cli_bad_data_folder_exits_2_with_one_line(tmp_path, cli):
    (tmp_path / "bad" / "fight").mkdir(parents=True)
    (tmp_path / "bad" / "noFight").mkdir(parents=True)
    (tmp_path / "bad" / "fight" / "a.mp4").write_bytes(b"junk")
    (tmp_path / "bad" / "noFight" / "b.mp4").write_bytes(b"junk")
    rc, out, err = cli(["violence", "run", "--data", tmp_path / "bad", "--out", tmp_path / "run"])
    lines = [ln for ln in err.splitlines() if ln.startswith("detectlab: error")]
    assert rc == 2 and len(lines) == 1 and str(tmp_path / "bad") in lines[0] and "none of the 2 clips" in lines[0]
    rc, out, err = cli(["violence", "run", "--data", tmp_path / "nope", "--out", tmp_path / "run2"])
    assert rc == 2 and "does not exist" in err


@pytest.mark.realdata
def test_real_fight_dataset(real_data):
    root = real_data / "video"
    if not root.exists():
        pytest.skip("real data has no video/ folder")
    clips = data.find_clips(root)
    labels = np.asarray([c.label for c in clips])
    assert (labels == 1).sum() == 124 and (labels == 0).sum() == 128  # SOURCE.md: 48 clips held back
    groups = {c.group for c in clips}
    assert any(g.startswith("https://www.youtube.com/") for g in groups) and "CamNet Dataset" in groups
    ch = data.read_clip_chunks(root / "fight" / "fi001.mp4", 32)
    assert ch.ndim == 5 and ch.shape[1:] == (16, 32, 32, 3) and ch.shape[0] >= 1
    # partitions built from the real groups never put a source video in both train and test
    from detectlab.violence.partition import make_partition

    g = np.asarray([c.group for c in clips])
    tr, te = make_partition(labels, g, np.ones(len(clips), int), "balanced2", seed=0)
    train_groups = set(g[np.concatenate(tr)]) if tr else set()
    test_groups = set(g[np.concatenate(te)])
    assert not train_groups & test_groups
