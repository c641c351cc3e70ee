"""Built-in multi-patient EEG: one EDF+ file per patient, 18 bipolar channels, one annotated seizure.

Each patient has its own "brain" so that domain shift is real:
- background: 1/f^beta noise (beta per patient) with a posterior alpha rhythm (8-12 Hz, patient
  frequency and power), frontal beta, per-channel gains (electrode impedance / skull), a noise floor
  and mains hum (50 or 60 Hz);
- artefacts: eye blinks (frontal, slow), muscle bursts (temporal, broadband 20-100 Hz), electrode pops;
- the seizure (20-80 s): a rhythmic discharge with harmonics (spike-like) whose frequency evolves from a
  patient-specific fast onset frequency down to a slower one, amplitude waxing then waning, starting in
  a patient-specific focal chain of channels and spreading to the others over time; the seizure's
  strength against the background differs between patients.
The demo and tests read these files through the same EDF path as real recordings.

:func:`write_edf_plus` writes EDF+ files record by record (any length, EDF+C or EDF+D with gaps, any
annotation texts, zero-duration markers included): the tests' and benchmarks' source of real-format
files that MNE's exporter cannot write; :func:`write_long_recording` streams a recording of many hours.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from detectlab.seizure.config import SyntheticConfig
from detectlab.seizure.data import BIPOLAR_NAMES, write_edf

#: focal chains (channel indices of the double banana) a seizure may start in
FOCI = {
    "left temporal": [0, 1, 2, 3],
    "left parasagittal": [4, 5, 6, 7],
    "right parasagittal": [8, 9, 10, 11],
    "right temporal": [12, 13, 14, 15],
    "midline": [16, 17, 5, 9],
}
FRONTAL = [0, 4, 8, 12]
POSTERIOR = [3, 7, 11, 15, 17]
TEMPORAL = [1, 2, 13, 14]


def patient_params(rng: np.random.Generator, cfg: SyntheticConfig) -> dict:
    s = cfg.shift
    dur = float(np.clip(rng.normal(cfg.duration_s, cfg.duration_sd), 3 * cfg.seizure_min_s + 20, None))
    sz_len = float(rng.uniform(cfg.seizure_min_s, min(cfg.seizure_max_s, dur - 20)))
    onset = float(rng.uniform(10, dur - sz_len - 10))
    f_start = float(np.clip(15 + s * rng.uniform(-6, 9), 8, 26))  # fast onset rhythm
    return {
        "duration": dur, "onset": onset, "offset": onset + sz_len,
        "gain": float(np.exp(s * rng.normal(0, 0.5))),  # overall amplitude (age, skull)
        "ch_gain": np.exp(s * rng.normal(0, 0.35, 18)),  # per-channel gains
        "beta_exp": float(1.0 + s * rng.uniform(-0.4, 0.8)),  # background 1/f exponent
        "alpha_f": float(10 + s * rng.uniform(-2, 2)), "alpha_amp": float(np.exp(s * rng.normal(0, 0.6))),
        "beta_amp": float(0.3 * np.exp(s * rng.normal(0, 0.6))),
        "noise": float(0.2 * np.exp(s * rng.normal(0, 0.5))),
        "mains": float(rng.choice([50.0, 60.0])),
        "f_start": f_start, "f_end": float(np.clip(f_start * rng.uniform(0.35, 0.7), 3, None)),
        "sz_amp": float(np.exp(rng.normal(np.log(2.2), 0.35 * s + 0.05))),  # seizure / background
        "harmonics": float(rng.uniform(0.2, 0.8)),
        "focus": list(FOCI)[int(rng.integers(len(FOCI)))],
        "spread": float(rng.uniform(0.1, 0.9)),
        "blink_rate": float(rng.uniform(2, 12)) / 60, "muscle_rate": float(rng.uniform(1, 8)) / 60,
        "muscle_amp": float(rng.uniform(0.5, 2.5)),
    }


def _pink(rng: np.random.Generator, shape: tuple[int, int], fs: float, exponent: float) -> np.ndarray:
    """Unit-SD noise with a 1/f^exponent power spectrum (per row), via the FFT."""
    n = shape[1]
    spec = rng.normal(size=(shape[0], n // 2 + 1)) + 1j * rng.normal(size=(shape[0], n // 2 + 1))
    f = np.fft.rfftfreq(n, 1 / fs)
    f[0] = f[1]
    x = np.fft.irfft(spec * f ** (-exponent / 2), n=n)
    return x / x.std(axis=1, keepdims=True)


def _events(rng: np.random.Generator, rate: float, dur: float) -> np.ndarray:
    return np.sort(rng.uniform(0, dur, rng.poisson(rate * dur)))


def generate_patient(rng: np.random.Generator, p: dict, fs: float) -> np.ndarray:
    """(18, n) signal in volts for one patient's parameters (vectorised over samples)."""
    n = int(round(p["duration"] * fs))
    t = np.arange(n) / fs
    x = _pink(rng, (18, n), fs, p["beta_exp"])
    # a common (volume-conducted) component correlates neighbouring channels
    x = 0.8 * x + 0.4 * _pink(rng, (1, n), fs, p["beta_exp"])
    # alpha: posterior, amplitude waxing and waning (slow random envelope)
    env = 1 + 0.5 * _pink(rng, (1, n), fs, 4.0)[0]
    alpha = np.sin(2 * np.pi * p["alpha_f"] * t + 0.3 * np.cumsum(rng.normal(0, 0.02, n))) * env
    w_alpha = np.full(18, 0.3)
    w_alpha[POSTERIOR] = 1.0
    x += p["alpha_amp"] * w_alpha[:, None] * alpha[None]
    beta = np.sin(2 * np.pi * rng.uniform(16, 24) * t + rng.uniform(0, 6.28))
    w_beta = np.full(18, 0.3)
    w_beta[FRONTAL] = 1.0
    x += p["beta_amp"] * w_beta[:, None] * beta[None]
    x += p["noise"] * rng.normal(size=(18, n))
    x += 0.3 * np.sin(2 * np.pi * p["mains"] * t)[None]
    # artefacts
    for tb in _events(rng, p["blink_rate"], p["duration"]):  # eye blinks: 0.3-s bumps on frontal chains
        bump = 6 * np.exp(-0.5 * ((t - tb) / 0.12) ** 2)
        x[FRONTAL] += bump[None]
    for tm in _events(rng, p["muscle_rate"], p["duration"]):  # muscle: 1-3 s broadband bursts
        d = rng.uniform(1, 3)
        m = (t >= tm) & (t < tm + d)
        burst = np.diff(rng.normal(size=(len(TEMPORAL), int(m.sum()) + 1)), axis=1)  # high-pass noise
        x[np.ix_(TEMPORAL, np.flatnonzero(m))] += p["muscle_amp"] * burst
    for tp in _events(rng, 1 / 60, p["duration"]):  # electrode pops: a step decaying over ~0.5 s
        c = int(rng.integers(18))
        x[c] += 8 * np.where(t >= tp, np.exp(-(t - tp) / 0.5), 0.0)
    # the seizure
    on, off = p["onset"], p["offset"]
    m = (t >= on) & (t < off)
    tau = (t[m] - on) / (off - on)
    freq = p["f_start"] + (p["f_end"] - p["f_start"]) * tau
    phase = 2 * np.pi * np.cumsum(freq) / fs
    h = p["harmonics"]
    wave = np.sin(phase) + h * np.sin(2 * phase + 0.5) + 0.5 * h * np.sin(3 * phase + 1.0)
    wave /= wave.std()
    amp = np.minimum(1.0, tau / 0.15) * np.minimum(1.0, (1 - tau) / 0.1)  # wax, plateau, wane
    focal = np.zeros(18)
    focal[FOCI[p["focus"]]] = 1.0
    spread = focal[:, None] + (1 - focal[:, None]) * p["spread"] * tau[None]  # (18, m)
    x[:, m] += p["sz_amp"] * spread * (amp * wave)[None]
    x *= (p["ch_gain"] * p["gain"])[:, None]
    return (x * 20e-6).astype(np.float64)  # ~20 uV background


def builtin_data(cfg: SyntheticConfig, folder: str | Path) -> Path:
    """The built-in cohort as an EDF folder (written once, reused): what `data = "builtin"` reads."""
    from detectlab.core import progress

    folder = Path(folder)
    progress.log(f"seizure: writing {cfg.n_patients} synthetic patients as EDF to {folder}")
    write_patients(folder, cfg)
    return folder


def write_patients(folder: str | Path, cfg: SyntheticConfig) -> list[Path]:
    """Write P01.edf ... (one per patient) with a 'seizure' EDF+ annotation; reuse files already there."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(cfg.n_patients):
        path = folder / f"P{i + 1:02d}.edf"
        paths.append(path)
        if path.exists():
            continue
        rng = np.random.default_rng([cfg.seed, i])
        p = patient_params(rng, cfg)
        x = generate_patient(rng, p, cfg.fs)
        tmp = path.with_name(path.stem + ".tmp.edf")
        write_edf(tmp, x, cfg.fs, BIPOLAR_NAMES, [(p["onset"], p["offset"])])
        tmp.replace(path)
    return paths


# ------------------------------------------------------------------------------------ EDF+ record writer
def _field(v: object, n: int) -> bytes:
    b = str(v).encode("ascii")[:n]
    return b + b" " * (n - len(b))


def _num(v: float, n: int = 8) -> bytes:
    t = f"{v:.6f}".rstrip("0").rstrip(".") if isinstance(v, float) else str(v)
    return _field(t[:n], n)


def _tal(onset: float, duration: float | None = None, texts: tuple[str, ...] = ()) -> bytes:
    on = f"{onset:+.6f}".rstrip("0").rstrip(".")
    head = on.encode() + (b"\x15" + f"{duration:g}".encode() if duration is not None else b"")
    return head + b"\x14" + b"".join(t.encode() + b"\x14" for t in texts) + (b"" if texts else b"\x14") + b"\x00"


def write_edf_plus(path: str | Path, blocks: Iterator[np.ndarray] | list[np.ndarray], fs: int, n_records: int,
                   names: list[str] | None = None, annotations: list[tuple[float, float, str]] = (),
                   record_onsets: list[float] | None = None, record_s: float = 1.0, phys_uv: float = 3200.0
                   ) -> Path:
    """Write an EDF+ file record by record from blocks of (C, k * fs * record_s) samples in volts.

    ``annotations``: (onset s, duration s (0 = a marker), text) in file time. ``record_onsets``: the
    start time of every data record; gaps make the file EDF+D (discontinuous). Samples are 16-bit over
    +-phys_uv microvolts."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = list(names or BIPOLAR_NAMES)
    spr = int(round(fs * record_s))
    onsets = list(record_onsets) if record_onsets is not None else [k * record_s for k in range(n_records)]
    gaps = any(abs(b - a - record_s) > 1e-6 for a, b in zip(onsets, onsets[1:]))
    per_rec: list[list[bytes]] = [[] for _ in range(n_records)]
    for on, dur, text in annotations:
        r = max(0, min(n_records - 1, int(np.searchsorted(onsets, on, side="right")) - 1))
        per_rec[r].append(_tal(on, dur if dur > 0 else 0.0, (text,)) if dur > 0 else _tal(on, None, (text,)))
    tal_len = max(len(_tal(onsets[r], None)) + sum(len(t) for t in per_rec[r]) for r in range(n_records))
    ann_spr = (tal_len + 1) // 2 + 4
    ns = len(names) + 1
    hdr = b"".join([_field("0", 8), _field("X X X X", 80), _field("Startdate 01-JAN-2020 X X X", 80),
                    _field("01.01.20", 8), _field("00.00.00", 8), _num(256 * (ns + 1)),
                    _field("EDF+D" if gaps else "EDF+C", 44), _num(n_records), _num(float(record_s)), _field(ns, 4)])
    labels = [f"EEG {n}" for n in names] + ["EDF Annotations"]
    cols = [
        [_field(lab, 16) for lab in labels], [_field("AgAgCl electrode", 80)] * len(names) + [_field("", 80)],
        [_field("uV", 8)] * len(names) + [_field("", 8)],
        [_num(-phys_uv)] * len(names) + [_num(-1)], [_num(phys_uv)] * len(names) + [_num(1)],
        [_num(-32768)] * ns, [_num(32767)] * ns, [_field("HP:0.1Hz LP:75Hz", 80)] * len(names) + [_field("", 80)],
        [_num(spr)] * len(names) + [_num(ann_spr)], [_field("", 32)] * ns,
    ]
    hdr += b"".join(b"".join(c) for c in cols)
    gain = 65535.0 / (2 * phys_uv)
    with open(path, "wb") as fh:
        fh.write(hdr)
        r = 0
        for blk in blocks:
            blk = np.asarray(blk, dtype=np.float64)
            k = blk.shape[1] // spr
            dig = np.clip(np.round((blk[:, : k * spr] * 1e6 + phys_uv) * gain - 32768), -32768, 32767).astype("<i2")
            dig = dig.reshape(len(names), k, spr).transpose(1, 0, 2)
            for j in range(k):
                if r >= n_records:
                    break
                tal = _tal(onsets[r], None) + b"".join(per_rec[r])
                ann = np.frombuffer(tal + b"\x00" * (2 * ann_spr - len(tal)), dtype="<i2")
                fh.write(dig[j].tobytes() + ann.tobytes())
                r += 1
        if r != n_records:
            raise ValueError(f"{r} records written, {n_records} declared")
    return path


def long_recording_blocks(hours: float, fs: int, seizures: list[tuple[float, float]], seed: int = 0,
                          block_s: int = 60) -> Iterator[np.ndarray]:
    """Blocks of (18, block_s * fs) volts of a simple long EEG: 1/f-like background (AR filtered noise
    with state kept across blocks), a posterior alpha rhythm, and rhythmic seizures at `seizures`."""
    from scipy.signal import lfilter

    rng = np.random.default_rng(seed)
    n_total = int(hours * 3600 * fs)
    zi = np.zeros((18, 1))
    w_alpha = np.full(18, 0.3)
    w_alpha[POSTERIOR] = 1.0
    for s0 in range(0, n_total, block_s * fs):
        n = min(block_s * fs, n_total - s0)
        t = (s0 + np.arange(n)) / fs
        bg, zi = lfilter([1.0], [1.0, -0.97], rng.normal(0, 1, (18, n)), axis=1, zi=zi)
        x = 0.25 * bg + 0.8 * w_alpha[:, None] * np.sin(2 * np.pi * 10 * t)[None] + 0.3 * rng.normal(0, 1, (18, n))
        for on, off in seizures:
            m = (t >= on) & (t < off)
            if m.any():
                f = 12 - 6 * (t[m] - on) / (off - on)
                x[:, m] += 4 * np.sin(2 * np.pi * np.cumsum(f) / fs)[None]
        yield x * 20e-6


def write_long_recording(path: str | Path, hours: float, fs: int = 256, seizures: list[tuple[float, float]] = (),
                         seed: int = 0) -> Path:
    """Stream an EDF+ recording of `hours` hours (18 bipolar channels) with annotated seizures to `path`."""
    n_rec = int(hours * 3600)
    ann = [(on, off - on, "seizure") for on, off in seizures]
    return write_edf_plus(path, long_recording_blocks(hours, fs, list(seizures), seed), fs, n_rec, annotations=ann)
