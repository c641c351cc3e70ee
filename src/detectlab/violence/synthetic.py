"""Built-in surveillance clips written as real H.264 mp4 files in the Surveillance-Fight layout.

``fight/fiNNN.mp4`` + ``noFight/nofiNNN.mp4`` + ``videos.txt`` (clip -> source recording), like the real
dataset, so the same reader, cache and group splits run on them.

- fight: two or three figures close together in fast, erratic, contacting motion with flailing arms;
- non-fight: one to three figures walking smoothly across the scene with slowly swinging arms;
- every source recording has its own background (gradient + static boxes) and figure colours;
- every *site* (camera) has its own style: brightness/contrast gain, a mirrored or zoomed viewpoint and
  the height of the ground band, so clients that hold different sites are non-IID;
- camera noise on every frame.

Sources are named ``https://synthetic.invalid/site<S>-src<K>`` so sorting the groups keeps sites together.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _write_mp4(path: Path, frames: np.ndarray, fps: int = 15) -> None:
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    with av.open(str(tmp), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width = frames.shape[2]
        stream.height = frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "20", "preset": "ultrafast", "tune": "zerolatency"}
        for arr in frames:
            for pkt in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(arr), format="rgb24")):
                container.mux(pkt)
        for pkt in stream.encode():
            container.mux(pkt)
    tmp.replace(path)


def site_style(site: int, n_sites: int) -> dict:
    """A camera's look: brightness gain/offset, mirror, zoom, ground height (deterministic in `site`)."""
    r = np.random.default_rng(1000 + site)
    return {
        "gain": float(0.55 + 0.8 * (site + 0.5) / max(1, n_sites) + r.uniform(-0.05, 0.05)),
        "offset": float(r.uniform(-20, 20)),
        "mirror": bool(site % 2),
        "zoom": float(r.uniform(0.8, 1.25)),
        "ground": float(r.uniform(0.45, 0.7)),
        "noise": float(r.uniform(2, 5)),
    }


def _background(rng: np.random.Generator, s: int) -> np.ndarray:
    c0, c1 = rng.uniform(30, 200, 3), rng.uniform(30, 200, 3)
    t = np.linspace(0, 1, s)[:, None, None]
    bg = np.broadcast_to(c0 * (1 - t) + c1 * t, (s, s, 3)).copy()
    for _ in range(rng.integers(2, 5)):
        x0, y0 = rng.integers(0, s - 8, 2)
        w, h = rng.integers(6, s // 3, 2)
        bg[y0:y0 + h, x0:x0 + w] = rng.uniform(20, 235, 3)
    return bg


def _tracks(rng: np.random.Generator, fight: bool, n_frames: int, s: int, ground: float, zoom: float
            ) -> tuple[np.ndarray, np.ndarray]:
    """Body centres (T, F, 2) as (x, y) in pixels and arm angles (T, F)."""
    if fight:
        nf = int(rng.integers(2, 4))
        centre = np.array([rng.uniform(0.3, 0.7) * s, ground * s])
        # an erratic random walk around a shared centre: big steps, pulled back so bodies keep touching
        pos = np.zeros((n_frames, nf, 2))
        pos[0] = centre + rng.normal(0, 2.5 * zoom, (nf, 2))
        for t in range(1, n_frames):
            step = rng.normal(0, 4.5 * zoom, (nf, 2))
            pull = 0.5 * (centre - pos[t - 1])
            pos[t] = pos[t - 1] + step + pull
        arms = rng.uniform(0, 2 * np.pi, (n_frames, nf))  # flailing: a new random angle every frame
    else:
        nf = int(rng.integers(1, 4))
        start = np.stack([rng.uniform(0.05, 0.95, nf) * s, (ground + rng.uniform(-0.08, 0.08, nf)) * s], 1)
        speed = rng.uniform(0.5, 1.4, nf) * zoom * rng.choice([-1, 1], nf)
        t = np.arange(n_frames)[:, None]
        x = start[None, :, 0] + speed[None, :] * t
        x = np.abs(np.mod(x, 2 * s) - s) * 0.9 + 0.05 * s  # walk back and forth inside the frame
        y = start[None, :, 1] + 0.6 * np.sin(2 * np.pi * t / 10 + rng.uniform(0, 6, nf))  # gait bob
        pos = np.stack([x, y], -1)
        arms = np.pi / 2 + 0.35 * np.sin(2 * np.pi * t / 12 + rng.uniform(0, 6, nf))
    return pos, arms


def render_clip(rng: np.random.Generator, fight: bool, bg: np.ndarray, colors: np.ndarray, style: dict,
                n_frames: int) -> np.ndarray:
    """(T, S, S, 3) uint8 frames of one clip."""
    s = bg.shape[0]
    z = style["zoom"]
    pos, arms = _tracks(rng, fight, n_frames, s, style["ground"], z)
    nf = pos.shape[1]
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    xx, yy = xx[None, None], yy[None, None]
    cx, cy = pos[..., 0][..., None, None], pos[..., 1][..., None, None]
    rx, ry = 3.2 * z, 7.0 * z
    body = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1
    head = (xx - cx) ** 2 + (yy - (cy - ry - 2.2 * z)) ** 2 <= (2.6 * z) ** 2
    reach = 7.0 if fight else 5.0
    ax = cx + np.cos(arms)[..., None, None] * reach * z
    ay = cy - 2 * z - np.sin(arms)[..., None, None] * reach * z
    arm = ((xx - ax) / (2.2 * z)) ** 2 + ((yy - ay) / (1.4 * z)) ** 2 <= 1
    mask = body | head | arm  # (T, F, S, S)
    frames = np.broadcast_to(bg, (n_frames, s, s, 3)).astype(np.float32).copy()
    for f in range(nf):  # draw order: later figures in front
        m = mask[:, f]
        frames[m] = colors[f % len(colors)]
    if style["mirror"]:
        frames = frames[:, :, ::-1]
    frames = frames * style["gain"] + style["offset"]
    frames += rng.normal(0, style["noise"], frames.shape)
    return np.clip(frames, 0, 255).astype(np.uint8)


def make_dataset(root: Path, n_sites: int = 2, sources_per_site: int = 4, clips_per_source: int = 4,
                 size: int = 64, n_frames: int = 32, seed: int = 0, fps: int = 15) -> Path:
    """Write the clips (half fight, half non-fight per source) and videos.txt; return `root`.

    Idempotent: when ``root/videos.txt`` exists the data is taken as already written.
    """
    root = Path(root)
    if (root / "videos.txt").exists():
        return root
    if size % 2:
        raise ValueError("H.264 needs an even frame size")
    rng = np.random.default_rng(seed)
    lines: list[str] = []
    n_fi = n_no = 0
    for site in range(n_sites):
        style = site_style(site, n_sites)
        for k in range(sources_per_site):
            bg = _background(rng, size)
            colors = rng.uniform(0, 255, (4, 3))
            lines.append(f"https://synthetic.invalid/site{site}-src{k:02d}")
            for j in range(clips_per_source):
                fight = j % 2 == 0
                frames = render_clip(rng, fight, bg, colors, style, n_frames)
                if fight:
                    n_fi += 1
                    name, folder = f"fi{n_fi:03d}", "fight"
                else:
                    n_no += 1
                    name, folder = f"nofi{n_no:03d}", "noFight"
                _write_mp4(root / folder / f"{name}.mp4", frames, fps)
                lines.append(f"{name}: 0.00.00 - 0.0{n_frames // fps}.00")
    (root / "videos.txt").write_text("\n".join(lines) + "\n")
    return root


def write_clip(path: Path, fight: bool, size: int = 64, n_frames: int = 32, seed: int = 0, site: int = 0) -> Path:
    """One synthetic clip as an mp4 (for predict examples and tests)."""
    rng = np.random.default_rng(seed)
    frames = render_clip(rng, fight, _background(rng, size), rng.uniform(0, 255, (4, 3)), site_style(site, 2),
                         n_frames)
    _write_mp4(Path(path), frames)
    return Path(path)
