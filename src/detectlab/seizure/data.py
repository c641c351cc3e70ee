"""EEG readers, validation, the 18-channel double-banana montage, the paper's preprocessing and windowing.

Accepted inputs
- EDF / EDF+ / BDF recordings (read with MNE). Channels may be referential 10-20 electrodes under any
  common spelling (``EEG FP1-REF``, ``Fp1``, ``T3`` = ``T7`` ...) or already bipolar (``FP1-F7``).
  The longitudinal bipolar montage (18 channels) is built from the electrodes, or taken as is; A1/A2
  are never used.
- Seizure labels, first found wins: EDF+ annotations whose text names a seizure (``seizure``, ``sz``,
  ``ictal``; not ``preictal``/``interictal``), a CSV beside the file (``<stem>.csv`` or
  ``<stem>.seizures.csv``, columns onset,offset in seconds), or a CHB-MIT ``*-summary.txt`` in the same
  folder naming the file.
- CHB-MIT 10-s windows (``chbmit_windows/chbNN/{ictal,preictal_10s}/*.npy``, 23 x 2561 at 256 Hz, uV).

Preprocessing (paper III-A): resample to ``fs`` (500 Hz in the paper preset; ``fs = 0`` keeps the
native rate, and a window is then ``fs`` samples), 8-30 Hz FIR band-pass (MNE), per-recording
channel standardisation, non-overlapping 1-s windows, majority label per window (a tie counts as
non-seizure).
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from detectlab.core.errors import InputError

#: The 18-channel longitudinal bipolar ("double banana") montage, in CHB-MIT order.
BIPOLAR = [
    ("FP1", "F7"), ("F7", "T7"), ("T7", "P7"), ("P7", "O1"),
    ("FP1", "F3"), ("F3", "C3"), ("C3", "P3"), ("P3", "O1"),
    ("FP2", "F4"), ("F4", "C4"), ("C4", "P4"), ("P4", "O2"),
    ("FP2", "F8"), ("F8", "T8"), ("T8", "P8"), ("P8", "O2"),
    ("FZ", "CZ"), ("CZ", "PZ"),
]
BIPOLAR_NAMES = [f"{a}-{b}" for a, b in BIPOLAR]
ELECTRODES = sorted({e for pair in BIPOLAR for e in pair})  # 19 electrodes, no A1/A2
OLD_NAMES = {"T3": "T7", "T4": "T8", "T5": "P7", "T6": "P8"}
EDF_SUFFIXES = (".edf", ".bdf")
MIN_FS = 64.0  # the 30 Hz low-pass needs a Nyquist frequency above 30 Hz

_REF_SUFFIX = re.compile(r"[-_ ]?(REF|LE|AR|AVG|CAR|A1A2|M1M2|A1|A2)$")
_DEDUP = re.compile(r"-\d+$")  # MNE renames duplicate channels NAME-0, NAME-1


def normalise_name(name: str) -> str:
    """'EEG FP1-REF' -> 'FP1', 'Fp1' -> 'FP1', 'T3' -> 'T7', 'fp1-f7' -> 'FP1-F7', 'T8-P8-0' -> 'T8-P8'."""
    n = name.strip().upper()
    n = re.sub(r"^(EEG|EOG|ECG|EMG)[\s:]+", "", n).replace(" ", "")
    n = _DEDUP.sub("", n)
    if n not in ("A1", "A2"):
        n = _REF_SUFFIX.sub("", n)
    return "-".join(OLD_NAMES.get(p, p) for p in n.split("-") if p)


def build_montage(x: np.ndarray, names: list[str], source: Any = "recording") -> tuple[np.ndarray, str]:
    """(18, n) double banana from channels `names` of `x` (n_channels, n); returns (data, how).

    Bipolar channels present (or their reverse, negated) are taken as is; otherwise the pair is
    computed from referential electrodes. Missing channels raise InputError.
    """
    norm = [normalise_name(n) for n in names]
    index: dict[str, int] = {}
    for i, n in enumerate(norm):
        index.setdefault(n, i)
    rows, kinds, missing = [], set(), []
    for a, b in BIPOLAR:
        if f"{a}-{b}" in index:
            rows.append(x[index[f"{a}-{b}"]])
            kinds.add("bipolar")
        elif f"{b}-{a}" in index:
            rows.append(-x[index[f"{b}-{a}"]])
            kinds.add("bipolar")
        elif a in index and b in index:
            rows.append(x[index[a]] - x[index[b]])
            kinds.add("referential")
        else:
            missing.append(f"{a}-{b}")
    if missing:
        lack = sorted({e for m in missing for e in m.split("-") if e not in index})
        raise InputError(
            source,
            f"missing montage channels {', '.join(missing)} (electrodes not found: {', '.join(lack)})",
            "the 18 bipolar channels FP1-F7 ... CZ-PZ or the 19 referential 10-20 electrodes",
        )
    return np.stack(rows).astype(np.float32, copy=False), "+".join(sorted(kinds))


def validate_signal(x: np.ndarray, names: list[str], source: Any) -> None:
    """NaN/inf and flat channels are input errors."""
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        raise InputError(source, f"channel {names[int(np.argmax(bad))]} contains NaN or infinite values",
                         "finite samples")
    ptp = np.ptp(x, axis=1) if x.shape[1] else np.zeros(len(x))
    flat = ptp <= 1e-12 * max(1.0, float(np.abs(x).max(initial=0.0)))
    if flat.any():
        raise InputError(source, f"channel {names[int(np.argmax(flat))]} is flat (constant signal)",
                         "a recorded EEG channel")


def validate_fs(fs: float, source: Any) -> float:
    if not np.isfinite(fs) or fs <= 0:
        raise InputError(source, f"unknown sampling rate ({fs})", "a positive sampling frequency in the header")
    if fs < MIN_FS:
        raise InputError(source, f"sampling rate {fs:g} Hz is too low for the 8-30 Hz band-pass",
                         f"at least {MIN_FS:g} Hz")
    return float(fs)


def validate_seizures(seizures: list[tuple[float, float]], duration: float, source: Any) -> list[tuple[float, float]]:
    out = []
    tol = 1.0  # one second of slack for rounding in annotation files
    for on, off in seizures:
        if not (np.isfinite(on) and np.isfinite(off)) or off <= on:
            raise InputError(source, f"seizure annotation {on:g}-{off:g} s has offset not after onset",
                             "onset < offset in seconds")
        if on < -tol or off > duration + tol:
            raise InputError(source, f"seizure annotation {on:g}-{off:g} s lies outside the recording "
                                     f"(0-{duration:g} s)", "annotations within the recording")
        out.append((max(0.0, float(on)), min(float(duration), float(off))))
    return sorted(out)


# ----------------------------------------------------------------------------------------------- labels
_SZ_TEXT = re.compile(r"(seiz|^sz|ictal)", re.I)
_NOT_SZ = re.compile(r"(pre-?ictal|inter-?ictal|post-?ictal|no.?seiz|non.?seiz)", re.I)


def seizures_from_annotations(annotations: Any) -> list[tuple[float, float]]:
    out = []
    for on, dur, desc in zip(annotations.onset, annotations.duration, annotations.description):
        if _SZ_TEXT.search(desc) and not _NOT_SZ.search(desc) and dur > 0:
            out.append((float(on), float(on + dur)))
    return out


def read_seizure_csv(path: Path) -> list[tuple[float, float]]:
    """CSV of seizure onset,offset seconds (a header line is optional)."""
    out = []
    with open(path, newline="") as fh:
        for i, row in enumerate(csv.reader(fh)):
            cells = [c.strip() for c in row if c.strip()]
            if not cells or cells[0].startswith("#"):
                continue
            try:
                on, off = float(cells[0]), float(cells[1])
            except (ValueError, IndexError):
                if i == 0:
                    continue  # header
                raise InputError(path, f"line {i + 1} is not 'onset,offset' in seconds", "two numbers per line") from None
            out.append((on, off))
    return out


def parse_chbmit_summary(path: Path) -> dict[str, list[tuple[float, float]]]:
    """{edf file name: [(start, end) s]} from a CHB-MIT ``chbNN-summary.txt``."""
    out: dict[str, list[tuple[float, float]]] = {}
    current = None
    start = None
    for line in Path(path).read_text(errors="replace").splitlines():
        line = line.strip()
        m = re.match(r"File Name:\s*(\S+)", line)
        if m:
            current = m.group(1)
            out.setdefault(current, [])
            continue
        m = re.match(r"Seizure(?:\s*\d+)?\s+Start Time:\s*([\d.]+)\s*seconds", line)
        if m and current:
            start = float(m.group(1))
            continue
        m = re.match(r"Seizure(?:\s*\d+)?\s+End Time:\s*([\d.]+)\s*seconds", line)
        if m and current and start is not None:
            out[current].append((start, float(m.group(1))))
            start = None
    return out


def find_labels(path: Path, annotations: Any) -> tuple[list[tuple[float, float]], str]:
    """Seizure intervals for a recording and where they came from ('none' when no source exists)."""
    sz = seizures_from_annotations(annotations) if annotations is not None else []
    if sz:
        return sz, "edf annotations"
    for cand in (path.with_suffix(".csv"), path.parent / f"{path.stem}.seizures.csv"):
        if cand.exists():
            return read_seizure_csv(cand), cand.name
    for summ in sorted(path.parent.glob("*-summary.txt")):
        table = parse_chbmit_summary(summ)
        if path.name in table:
            return table[path.name], summ.name
    if annotations is not None and len(annotations):
        return [], "edf annotations (no seizure)"
    return [], "none"


# ---------------------------------------------------------------------------------------------- reading
@dataclass
class Recording:
    """One recording in the 18-channel bipolar montage (volts)."""

    patient: str
    source: str
    x: np.ndarray  # (18, n) float32
    fs: float
    seizures: list[tuple[float, float]] = field(default_factory=list)
    label_source: str = "none"
    montage: str = "bipolar"

    @property
    def duration(self) -> float:
        return self.x.shape[1] / self.fs

    def sample_labels(self) -> np.ndarray:
        return interval_labels(self.seizures, self.x.shape[1], self.fs)


def interval_labels(seizures: list[tuple[float, float]], n: int, fs: float) -> np.ndarray:
    """Per-sample 0/1 labels: sample i (time i/fs) is 1 when onset <= i/fs < offset (vectorised)."""
    t = np.arange(n) / fs
    y = np.zeros(n, dtype=np.int8)
    for on, off in seizures:
        y[(t >= on) & (t < off)] = 1
    return y


def check_edf_header(path: Path) -> None:
    """Check the fixed EDF/BDF header fields MNE tolerates silently: the data-record duration (which
    sets the sampling rate) and the file length the header promises."""
    size = Path(path).stat().st_size
    with open(path, "rb") as fh:
        raw = fh.read(256)
        if len(raw) < 256:
            raise InputError(path, f"corrupt EDF header (file has {len(raw)} bytes, a header needs 256)",
                             "a valid EDF/EDF+/BDF file")
        try:
            raw += fh.read(max(0, int(raw[252:256].decode("ascii").strip())) * 256)
        except (ValueError, UnicodeDecodeError):
            pass
    try:
        n_header = int(raw[184:192].decode("ascii").strip())
        n_records = int(raw[236:244].decode("ascii").strip())
        ns = int(raw[252:256].decode("ascii").strip())
        dur_text = raw[244:252].decode("ascii").strip()
        off = 256 + ns * 216
        spr = [int(raw[off + 8 * i: off + 8 * i + 8].decode("ascii").strip()) for i in range(ns)]
    except (ValueError, UnicodeDecodeError):
        raise InputError(path, "corrupt EDF header (a fixed header field is not a number)",
                         "a valid EDF/EDF+/BDF file") from None
    try:
        dur = float(dur_text)
    except ValueError:
        dur = float("nan")
    if not np.isfinite(dur) or dur <= 0:
        raise InputError(path, f"unknown sampling rate (data-record duration '{dur_text}' in the header)",
                         "a positive record duration in seconds")
    width = 3 if raw[:1] == b"\xff" else 2
    expected = n_header + n_records * sum(spr) * width
    if n_records > 0 and size < expected:
        have = (size - n_header) // max(1, sum(spr) * width)
        raise InputError(path, f"corrupt EDF: file is truncated ({have} of {n_records} data records)",
                         "a complete EDF/EDF+/BDF file")


def read_edf(path: str | Path, patient: str | None = None, labels: Path | None = None) -> Recording:
    """Read an EDF/EDF+/BDF file into the double-banana montage, validated, with its seizure labels."""
    import mne

    path = Path(path)
    if not path.exists():
        raise InputError(path, "recording does not exist")
    if not path.is_file():
        raise InputError(path, "recording is not a regular file")
    if path.suffix.lower() not in EDF_SUFFIXES:
        raise InputError(path, f"unsupported file type '{path.suffix}'", "an .edf or .bdf recording")
    check_edf_header(path)
    reader = mne.io.read_raw_bdf if path.suffix.lower() == ".bdf" else mne.io.read_raw_edf
    try:
        raw = reader(str(path), preload=False, verbose="error")
    except Exception as e:  # noqa: BLE001 - MNE raises many types for a broken header
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise InputError(path, f"corrupt or unreadable EDF header ({first[:160]})", "a valid EDF/EDF+/BDF file") from None
    fs = validate_fs(float(raw.info["sfreq"]), path)
    try:
        data = raw.get_data()
    except Exception as e:  # noqa: BLE001 - truncated data records
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise InputError(path, f"corrupt EDF data records ({first[:160]})", "a complete EDF/EDF+/BDF file") from None
    if data.shape[1] < fs:
        raise InputError(path, f"recording is only {data.shape[1] / fs:.2f} s long", "at least one 1-s window")
    x, how = build_montage(data, list(raw.ch_names), path)
    validate_signal(x, BIPOLAR_NAMES, path)
    if labels is not None:
        seizures, src = read_seizure_csv(labels), labels.name
    else:
        seizures, src = find_labels(path, raw.annotations)
    seizures = validate_seizures(seizures, x.shape[1] / fs, path)
    return Recording(patient or path.stem, str(path), x, fs, seizures, src, how)


def write_edf(path: str | Path, x: np.ndarray, fs: float, names: list[str] | None = None,
              seizures: list[tuple[float, float]] = (), description: str = "seizure") -> Path:
    """Write channels (volts) and seizure annotations as EDF+ through MNE/edfio."""
    import mne

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = names or BIPOLAR_NAMES
    info = mne.create_info(list(names), float(fs), ch_types="eeg", verbose="error")
    raw = mne.io.RawArray(np.asarray(x, dtype=np.float64), info, verbose="error")
    if seizures:
        raw.set_annotations(mne.Annotations([s[0] for s in seizures], [s[1] - s[0] for s in seizures],
                                            [description] * len(seizures)))
    mne.export.export_raw(str(path), raw, fmt="edf", overwrite=True, verbose="error")
    return path


def list_recordings(folder: Path) -> list[tuple[str, Path]]:
    """(patient, file) for every EDF/BDF under `folder`. A file in a sub-folder belongs to the patient
    named by that sub-folder; a file directly in `folder` is its own patient (its stem)."""
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in EDF_SUFFIXES and p.is_file())
    out = []
    for f in files:
        rel = f.relative_to(folder)
        out.append((rel.parts[0] if len(rel.parts) > 1 else f.stem, f))
    return out


# ----------------------------------------------------------------------------------------- preprocessing
@dataclass
class PreprocessConfig:
    l_freq: float = 8.0
    h_freq: float = 30.0
    fs: float = 500.0  # resample to this rate; 0 keeps the native rate (window = fs samples)
    window_s: float = 1.0


def bandpass_resample(x: np.ndarray, fs: float, pre: PreprocessConfig) -> tuple[np.ndarray, float]:
    """Resample (when `pre.fs` differs) then 8-30 Hz zero-phase FIR band-pass, both with MNE."""
    import mne

    x = np.asarray(x, dtype=np.float64)
    out_fs = float(pre.fs) if pre.fs and abs(pre.fs - fs) > 1e-6 else float(fs)
    if out_fs != fs:
        x = mne.filter.resample(x, up=out_fs, down=fs, axis=-1, verbose="error")
    x = mne.filter.filter_data(x, out_fs, pre.l_freq, pre.h_freq, method="fir", verbose="error")
    return x, out_fs


def standardise(x: np.ndarray) -> np.ndarray:
    """Zero mean, unit SD per channel (rows)."""
    mu = x.mean(axis=1, keepdims=True)
    sd = x.std(axis=1, keepdims=True)
    return ((x - mu) / np.where(sd > 0, sd, 1.0)).astype(np.float32)


def make_windows(x: np.ndarray, y: np.ndarray, win: int) -> tuple[np.ndarray, np.ndarray]:
    """Non-overlapping windows (T, C, win) and their majority labels (T,); a trailing partial window is
    dropped; a tie (exactly half seizure samples) counts as non-seizure."""
    t = x.shape[1] // win
    xw = x[:, : t * win].reshape(x.shape[0], t, win).transpose(1, 0, 2)
    yw = (y[: t * win].reshape(t, win).astype(np.float32).mean(axis=1) > 0.5).astype(np.int8)
    return np.ascontiguousarray(xw), yw


@dataclass
class PatientWindows:
    """The windows of one patient, in time order."""

    patient: str
    X: np.ndarray  # (T, 18, L) float32
    y: np.ndarray  # (T,) int8
    t0: np.ndarray  # (T,) window start, seconds
    fs: float
    seizures: list[tuple[float, float]]
    duration: float
    source: str = ""


def preprocess_recording(rec: Recording, pre: PreprocessConfig) -> PatientWindows:
    x, fs = bandpass_resample(rec.x, rec.fs, pre)
    x = standardise(x)
    win = int(round(pre.window_s * fs))
    y = interval_labels(rec.seizures, x.shape[1], fs)
    X, yw = make_windows(x, y, win)
    return PatientWindows(rec.patient, X, yw, np.arange(len(yw)) * pre.window_s, fs, rec.seizures,
                          rec.duration, rec.source)


def merge_patient(parts: list[PatientWindows]) -> PatientWindows:
    """Several recordings of one patient as one sequence (recordings kept in order, times shifted)."""
    if len(parts) == 1:
        return parts[0]
    X = np.concatenate([p.X for p in parts])
    y = np.concatenate([p.y for p in parts])
    t0, sz, off = [], [], 0.0
    for p in parts:
        t0.append(p.t0 + off)
        sz += [(a + off, b + off) for a, b in p.seizures]
        off += len(p.y) * (p.t0[1] - p.t0[0] if len(p.t0) > 1 else 1.0)
    return PatientWindows(parts[0].patient, X, y, np.concatenate(t0), parts[0].fs, sz, off,
                          ";".join(p.source for p in parts))


def load_edf_folder(folder: Path, pre: PreprocessConfig) -> list[PatientWindows]:
    recs = list_recordings(folder)
    if not recs:
        raise InputError(folder, "no .edf or .bdf recordings found", "a folder of EDF/BDF files")
    by_patient: dict[str, list[PatientWindows]] = {}
    for patient, f in recs:
        by_patient.setdefault(patient, []).append(preprocess_recording(read_edf(f, patient), pre))
    return [merge_patient(v) for _, v in sorted(by_patient.items())]


# -------------------------------------------------------------------------------------- CHB-MIT windows
CHB_FS = 256.0


def is_chbmit_windows(folder: Path) -> bool:
    return any(folder.glob("chb*/ictal/*.npy"))


def load_chbmit_windows(folder: Path, pre: PreprocessConfig, patients: list[str] | None = None
                        ) -> list[PatientWindows]:
    """CHB-MIT 10-s windows: per record its pre-onset window (label 0) then its ictal window (label 1).

    Each 10-s segment is band-passed (and resampled) on its own (segments are not contiguous), the
    patient's segments are standardised together, then cut into 1-s windows (10 per segment).
    Rows are picked by the channel names of the patient's summary file (the first 18 are the double
    banana).
    """
    folder = Path(folder)
    out = []
    for pdir in sorted(d for d in folder.glob("chb*") if d.is_dir()):
        if patients and pdir.name not in patients:
            continue
        names = _summary_channels(pdir)
        segs, labels, srcs = [], [], []
        for ictal in sorted((pdir / "ictal").glob("*_ictal.npy")):
            rec = ictal.name[: -len("_ictal.npy")]
            pre_f = pdir / "preictal_10s" / f"{rec}_preictal10s.npy"
            for f, lab in ((pre_f, 0), (ictal, 1)):
                if not f.exists():
                    raise InputError(f, "missing window file of a CHB-MIT record", "ictal and preictal_10s pairs")
                try:
                    a = np.load(f, allow_pickle=False)
                except (ValueError, OSError) as e:
                    raise InputError(f, f"not a readable .npy array ({e})") from None
                if a.ndim != 2 or a.shape[0] != len(names):
                    raise InputError(f, f"array shape {a.shape} does not match {len(names)} channels",
                                     "(23, 2561) CHB-MIT windows")
                x, _ = build_montage(a * 1e-6, names, f)  # uV -> V
                validate_signal(x, BIPOLAR_NAMES, f)
                segs.append(x)
                labels.append(lab)
                srcs.append(f.name)
        if not segs:
            continue
        filt = [bandpass_resample(s, CHB_FS, pre) for s in segs]
        fs = filt[0][1]
        allx = np.concatenate([f[0] for f in filt], axis=1)
        mu, sd = allx.mean(axis=1, keepdims=True), allx.std(axis=1, keepdims=True)
        win = int(round(pre.window_s * fs))
        Xs, ys = [], []
        for (xf, _), lab in zip(filt, labels):
            Xw, _ = make_windows(((xf - mu) / sd).astype(np.float32), np.zeros(xf.shape[1], np.int8), win)
            Xs.append(Xw)
            ys.append(np.full(len(Xw), lab, np.int8))
        X, y = np.concatenate(Xs), np.concatenate(ys)
        t0 = np.arange(len(y)) * pre.window_s
        # "seizures" on the concatenated time axis (each ictal segment is one event)
        sz, t = [], 0.0
        for Xw, lab in zip(Xs, labels):
            if lab == 1:
                sz.append((t, t + len(Xw) * pre.window_s))
            t += len(Xw) * pre.window_s
        out.append(PatientWindows(pdir.name, X, y, t0, fs, sz, t, str(pdir)))
    if not out:
        raise InputError(folder, "no CHB-MIT window files found", "chbNN/ictal/*.npy and chbNN/preictal_10s/*.npy")
    return out


def _summary_channels(pdir: Path) -> list[str]:
    summ = next(iter(sorted(pdir.glob("*-summary.txt"))), None)
    if summ is None:
        return ["FP1-F7", "F7-T7", "T7-P7", "P7-O1", "FP1-F3", "F3-C3", "C3-P3", "P3-O1", "FP2-F4", "F4-C4",
                "C4-P4", "P4-O2", "FP2-F8", "F8-T8", "T8-P8", "P8-O2", "FZ-CZ", "CZ-PZ", "P7-T7", "T7-FT9",
                "FT9-FT10", "FT10-T8", "T8-P8"]
    names = []
    for line in summ.read_text(errors="replace").splitlines():
        m = re.match(r"Channel\s+\d+:\s*(\S+)", line.strip())
        if m:
            names.append(m.group(1))
        elif names and line.startswith("File Name"):
            break
    return names


# ------------------------------------------------------------------------------------ dataset + cache
def resolve_dataset(path: Path) -> tuple[str, Path]:
    """('chbmit_windows' | 'edf', folder) for a data path (the eeg root, a dataset folder or an EDF folder)."""
    path = Path(path)
    if path.is_file():
        return "edf", path
    if (path / "chbmit_windows").is_dir() and is_chbmit_windows(path / "chbmit_windows"):
        return "chbmit_windows", path / "chbmit_windows"
    if is_chbmit_windows(path):
        return "chbmit_windows", path
    return "edf", path


def save_windows(patients: list[PatientWindows], folder: Path) -> None:
    """Cache the windows of all patients: X.npy (N,C,L), y.npy, pid.npy, meta.json."""
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "X.npy", np.concatenate([p.X for p in patients]))
    np.save(folder / "y.npy", np.concatenate([p.y for p in patients]))
    np.save(folder / "pid.npy", np.concatenate([np.full(len(p.y), i, np.int32) for i, p in enumerate(patients)]))
    meta = {"patients": [{"patient": p.patient, "n": int(len(p.y)), "fs": p.fs, "seizures": p.seizures,
                          "duration": p.duration, "source": p.source, "window_s": float(p.t0[1] - p.t0[0])
                          if len(p.t0) > 1 else 1.0} for p in patients]}
    (folder / "meta.json").write_text(json.dumps(meta, indent=1))


@dataclass
class WindowSet:
    """All windows of all patients, as arrays (what the training units read)."""

    X: np.ndarray
    y: np.ndarray
    pid: np.ndarray
    patients: list[dict]

    @property
    def names(self) -> list[str]:
        return [p["patient"] for p in self.patients]


def load_windows(folder: Path, mmap: bool = True) -> WindowSet:
    meta = json.loads((folder / "meta.json").read_text())
    return WindowSet(np.load(folder / "X.npy", mmap_mode="r" if mmap else None), np.load(folder / "y.npy"),
                     np.load(folder / "pid.npy"), meta["patients"])
