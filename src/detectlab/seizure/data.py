"""EEG readers, validation, the 18-channel double-banana montage, the paper's preprocessing, windowing, and
the window store the training units read.

Accepted inputs
- EDF / EDF+ / BDF recordings. Channels may be referential 10-20 electrodes under any common spelling
  (``EEG FP1-REF``, ``Fp1``, ``T3`` = ``T7`` ...) or already bipolar (``FP1-F7``); the longitudinal bipolar
  montage (18 channels) is built from them, A1/A2 are never used. EDF+D (discontinuous) files are split at
  every gap into separate continuous segments (each its own sequence), with annotations re-timed.
- Files are grouped into patients by (first match wins) a ``patients.csv`` (columns file,patient) in the
  data folder, the datasets' naming (CHB-MIT ``chb01_03`` -> chb01, and chb21 -> chb01: the same girl
  recorded 1.5 years later; TUH ``aaaaaajy_s001_t000`` -> aaaaaajy; Siena ``PN00-1`` -> PN00; SeizeIT
  ``P_ID10_r1`` -> P_ID10; BIDS ``sub-01_...`` -> sub-01), the first sub-folder, else the file's stem.
- Seizure labels, first found wins: EDF+ annotations (texts naming a seizure or TUH seizure codes;
  ``Sz onset``/``Sz offset`` zero-duration markers are paired; "seizure-free", pre-/inter-/post-ictal,
  bckg are not seizures), then beside the file ``<stem>.csv`` (onset,offset seconds; or a TUH csv),
  ``<stem>.csv_bi``, ``<stem>.tse(_bi)``, a BIDS ``_events.tsv``, a SeizeIT ``_a2.tsv``/``_a1.tsv``, a
  CHB-MIT ``*-summary.txt`` naming the file. For training and evaluation a recording whose labels cannot
  be read (none of these sources, an unpaired onset marker) is an input error.
- CHB-MIT 10-s windows (``chbmit_windows/chbNN/{ictal,preictal_10s}/*.npy``, 23 x 2561 at 256 Hz, uV).
- Helsinki neonatal windows (``helsinki_neonatal_windows/expert_{A,B}_1sec_1chunk_64Hz.hdf5``, h5py):
  1-s windows at 64 Hz of 18 bipolar channels in volts; each window's infant is recovered from the
  expert's annotation CSV (see :func:`load_helsinki`).

Preprocessing (paper III-A): resampling and the 8-30 Hz band-pass in ONE FFT step (the zero-phase FIR that
MNE designs, applied as its frequency response, with MNE's odd-reflection padding; tests compare with
``mne.filter.filter_data``), standardisation (``robust``, ``moving`` or ``zscore``; see config.py),
non-overlapping 1-s windows, majority label per window (a tie counts as non-seizure). Recordings longer
than ``preprocess.chunk_s`` are read, filtered and standardised in chunks (two passes for robust/zscore),
so no step holds a whole long recording.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from detectlab.core import progress
from detectlab.core.errors import InputError
from detectlab.seizure.config import PreprocessConfig

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


# ---------------------------------------------------------------------------------------------- montage
def montage_plan(names: list[str], source: Any = "recording") -> tuple[list[tuple[int, int, float]], str]:
    """How to compute each of the 18 bipolar rows from channels `names`: (i, j, sign) means
    sign * x[i] (j < 0) or x[i] - x[j]. Bipolar channels present (or reversed, negated) are taken as
    is, else the pair is computed from referential electrodes. Missing channels raise InputError."""
    norm = [normalise_name(n) for n in names]
    index: dict[str, int] = {}
    for i, n in enumerate(norm):
        index.setdefault(n, i)
    plan, kinds, missing = [], set(), []
    for a, b in BIPOLAR:
        if f"{a}-{b}" in index:
            plan.append((index[f"{a}-{b}"], -1, 1.0))
            kinds.add("bipolar")
        elif f"{b}-{a}" in index:
            plan.append((index[f"{b}-{a}"], -1, -1.0))
            kinds.add("bipolar")
        elif a in index and b in index:
            plan.append((index[a], index[b], 1.0))
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
    return plan, "+".join(sorted(kinds))


def apply_plan(x: np.ndarray, plan: list[tuple[int, int, float]]) -> np.ndarray:
    rows = [sign * x[i] if j < 0 else x[i] - x[j] for i, j, sign in plan]
    return np.stack(rows).astype(np.float32, copy=False)


def build_montage(x: np.ndarray, names: list[str], source: Any = "recording") -> tuple[np.ndarray, str]:
    """(18, n) double banana from channels `names` of `x` (n_channels, n); returns (data, how)."""
    plan, how = montage_plan(names, source)
    return apply_plan(x, plan), how


# ------------------------------------------------------------------------------------------- validation
def check_finite(x: np.ndarray, names: list[str], source: Any) -> None:
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        raise InputError(source, f"channel {names[int(np.argmax(bad))]} contains NaN or infinite values",
                         "finite samples")


def check_not_flat(lo: np.ndarray, hi: np.ndarray, names: list[str], source: Any) -> None:
    """Flat channels (constant over the whole recording) from per-channel minima and maxima."""
    scale = max(1.0, float(np.max(np.abs(np.concatenate([lo, hi]))))) if len(lo) else 1.0
    flat = (hi - lo) <= 1e-12 * scale
    if flat.any():
        raise InputError(source, f"channel {names[int(np.argmax(flat))]} is flat (constant signal)",
                         "a recorded EEG channel")


def validate_signal(x: np.ndarray, names: list[str], source: Any) -> None:
    """NaN/inf and flat channels are input errors."""
    check_finite(x, names, source)
    if x.shape[1]:
        check_not_flat(x.min(axis=1), x.max(axis=1), names, source)


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
    return merge_intervals(out)


def merge_intervals(iv: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Sorted union of intervals (overlapping or touching ones joined)."""
    out: list[tuple[float, float]] = []
    for a, b in sorted(iv):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


# ----------------------------------------------------------------------------------------------- labels
#: TUH seizure-type codes (TUSZ): focal/generalised non-specific, simple/complex partial, absence, tonic,
#: clonic, tonic-clonic, atonic, myoclonic seizures. 'nesz' (non-epileptic) and 'bckg' are not seizures.
TUH_SEIZURE_CODES = ("seiz", "fnsz", "gnsz", "spsz", "cpsz", "absz", "tnsz", "cnsz", "tcsz", "atsz", "mysz")
_NOT_SZ = re.compile(r"(pre-?ictal|inter-?ictal|post-?ictal|seizure[-_ ]?free|sz[-_ ]?free|\bno[-_ ]?(seizure|sz)\b|"
                     r"non[-_ ]?(seizure|sz|epileptic)|without[-_ ]seizure|\bbckg\b|\bnesz\b|\bfree of)", re.I)
_SZ_TEXT = re.compile(r"(seizure|\bsz|\bictal|\bseiz\b|\b(" + "|".join(TUH_SEIZURE_CODES) + r")\b)", re.I)
_ONSET = re.compile(r"(onset|start|begin)", re.I)
_OFFSET = re.compile(r"(offset|end\b|stop|termination)", re.I)


def is_seizure_text(text: str) -> bool:
    """True for an annotation naming a seizure ('Seizure', 'sz', 'Sz onset', TUH codes such as 'cpsz');
    False for 'seizure-free period', 'preictal', 'no seizure', 'bckg', 'nesz', other events."""
    return bool(_SZ_TEXT.search(text)) and not _NOT_SZ.search(text)


def seizures_from_events(events: list[tuple[float, float, str]], source: Any) -> list[tuple[float, float]]:
    """Seizure intervals from (onset, duration, text) events. Events with a duration are intervals;
    zero-duration markers are paired: an onset marker ('Sz onset', 'seizure start') with the next offset
    marker ('Sz offset', 'seizure end'); an onset marker without an offset is an input error."""
    out, pending = [], None
    for on, dur, text in sorted(events, key=lambda e: e[0]):
        if not is_seizure_text(text):
            continue
        if dur > 0:
            out.append((float(on), float(on + dur)))
        elif _OFFSET.search(text):
            if pending is None:
                raise InputError(source, f"seizure offset marker '{text}' at {on:g} s has no onset marker before it",
                                 "paired onset/offset markers or annotations with a duration")
            out.append((pending, float(on)))
            pending = None
        else:  # an onset marker (or a bare zero-duration 'seizure')
            if pending is not None:
                raise InputError(source, f"two seizure onset markers ({pending:g} s, {on:g} s) without an offset "
                                         "between them", "paired onset/offset markers")
            pending = float(on)
    if pending is not None:
        raise InputError(source, f"seizure onset marker at {pending:g} s has no offset marker",
                         "paired onset/offset markers or annotations with a duration")
    return out


def read_seizure_csv(path: Path) -> list[tuple[float, float]]:
    """CSV of seizure onset,offset seconds (a header line is optional; empty = no seizures), or a TUH csv."""
    text = Path(path).read_text(errors="replace")
    if re.search(r"^\s*channel\s*,\s*start_time", text, re.M | re.I):
        return read_tuh_csv(path)
    out = []
    for i, row in enumerate(csv.reader(text.splitlines())):
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


def read_tuh_csv(path: Path) -> list[tuple[float, float]]:
    """TUH ``.csv``/``.csv_bi`` (# comments, then channel,start_time,stop_time,label,confidence): the union
    over channels of the rows whose label is a seizure code."""
    rows = [ln for ln in Path(path).read_text(errors="replace").splitlines() if ln.strip() and not ln.startswith("#")]
    if not rows:
        raise InputError(path, "empty TUH annotation file", "a channel,start_time,stop_time,label,confidence table")
    reader = csv.DictReader(rows)
    need = {"start_time", "stop_time", "label"}
    if not need <= {c.strip().lower() for c in (reader.fieldnames or [])}:
        raise InputError(path, f"TUH annotation header {reader.fieldnames} lacks {sorted(need)}",
                         "channel,start_time,stop_time,label,confidence")
    out = []
    for k, r in enumerate(reader):
        r = {(a or "").strip().lower(): (b or "").strip() for a, b in r.items()}
        try:
            on, off = float(r["start_time"]), float(r["stop_time"])
        except ValueError:
            raise InputError(path, f"row {k + 2} has non-numeric times", "start_time,stop_time in seconds") from None
        if is_seizure_text(r["label"]):
            out.append((on, off))
    return merge_intervals(out)


def read_tuh_tse(path: Path) -> list[tuple[float, float]]:
    """TUH ``.tse``/``.tse_bi``: 'version = ...' then 'start stop label confidence' lines."""
    out = []
    for k, ln in enumerate(Path(path).read_text(errors="replace").splitlines()):
        parts = ln.split()
        if not parts or parts[0].startswith(("version", "#")):
            continue
        try:
            on, off, lab = float(parts[0]), float(parts[1]), parts[2]
        except (ValueError, IndexError):
            raise InputError(path, f"line {k + 1} is not 'start stop label confidence'", "a TUH .tse file") from None
        if is_seizure_text(lab):
            out.append((on, off))
    return merge_intervals(out)


def read_bids_events(path: Path) -> list[tuple[float, float]]:
    """BIDS-score / SzCORE ``_events.tsv``: onset, duration, eventType ('sz...' = seizure, 'bckg')."""
    rows = list(csv.DictReader(Path(path).read_text(errors="replace").splitlines(), delimiter="\t"))
    if rows and not {"onset", "duration", "eventType"} <= set(rows[0]):
        raise InputError(path, "BIDS events file lacks onset, duration or eventType columns",
                         "an SzCORE _events.tsv")
    out = []
    for k, r in enumerate(rows):
        ev = (r.get("eventType") or "").strip().lower()
        if ev.startswith("sz") or is_seizure_text(ev):
            try:
                on, dur = float(r["onset"]), float(r["duration"])
            except ValueError:
                raise InputError(path, f"row {k + 2} has a non-numeric onset or duration", "seconds") from None
            out.append((on, on + dur))
    return out


def read_seizeit_tsv(path: Path) -> list[tuple[float, float]]:
    """SeizeIT ``<recording>_a2.tsv``: '#' comments, then start, stop, type, comments (tab-separated)."""
    out = []
    for k, ln in enumerate(Path(path).read_text(errors="replace").splitlines()):
        if not ln.strip() or ln.startswith("#"):
            continue
        parts = ln.split("\t")
        try:
            out.append((float(parts[0]), float(parts[1])))
        except (ValueError, IndexError):
            if k == 0:
                continue
            raise InputError(path, f"line {k + 1} is not 'start<TAB>stop<TAB>type'", "a SeizeIT annotation file") from None
    return out


def parse_chbmit_summary(path: Path) -> dict[str, list[tuple[float, float]]]:
    """{edf file name: [(start, end) s]} from a CHB-MIT ``chbNN-summary.txt``; a start without an end, or a
    seizure count that does not match the listed seizures, is an input error."""
    out: dict[str, list[tuple[float, float]]] = {}
    declared: dict[str, int] = {}
    current = None
    start = None
    for line in Path(path).read_text(errors="replace").splitlines():
        line = line.strip()
        m = re.match(r"File Name:\s*(\S+)", line)
        if m:
            if start is not None:
                raise InputError(path, f"{current}: seizure start {start:g} s has no end time", "Start/End pairs")
            current = m.group(1)
            out.setdefault(current, [])
            continue
        m = re.match(r"Number of Seizures in File:\s*(\d+)", line)
        if m and current:
            declared[current] = int(m.group(1))
            continue
        m = re.match(r"Seizure(?:\s*\d+)?\s+Start Time:\s*([\d.]+)\s*seconds", line)
        if m and current:
            if start is not None:
                raise InputError(path, f"{current}: seizure start {start:g} s has no end time", "Start/End pairs")
            start = float(m.group(1))
            continue
        m = re.match(r"Seizure(?:\s*\d+)?\s+End Time:\s*([\d.]+)\s*seconds", line)
        if m and current:
            if start is None:
                raise InputError(path, f"{current}: seizure end {m.group(1)} s has no start time", "Start/End pairs")
            out[current].append((start, float(m.group(1))))
            start = None
    if start is not None:
        raise InputError(path, f"{current}: seizure start {start:g} s has no end time", "Start/End pairs")
    for f, n in declared.items():
        if n != len(out.get(f, [])):
            raise InputError(path, f"{f}: 'Number of Seizures in File: {n}' but {len(out.get(f, []))} listed",
                             "as many Start/End pairs as declared")
    return out


def side_label_files(path: Path) -> list[tuple[Path, Any]]:
    """Candidate label files beside a recording, in the order they are tried, with their readers."""
    stem = path.stem
    bids = re.sub(r"_eeg$", "", stem)
    return [
        (path.with_suffix(".csv"), read_seizure_csv),
        (path.parent / f"{stem}.seizures.csv", read_seizure_csv),
        (path.with_suffix(".csv_bi"), read_tuh_csv),
        (path.with_suffix(".tse_bi"), read_tuh_tse),
        (path.with_suffix(".tse"), read_tuh_tse),
        (path.parent / f"{bids}_events.tsv", read_bids_events),
        (path.parent / f"{stem}_a2.tsv", read_seizeit_tsv),
        (path.parent / f"{stem}_a1.tsv", read_seizeit_tsv),
    ]


def find_labels(path: Path, events: list[tuple[float, float, str]] | None
                ) -> tuple[list[tuple[float, float]] | None, str]:
    """Seizure intervals for a recording and where they came from; (None, 'none') when no source exists.

    EDF+ annotations that name seizures win; then the side files; then a CHB-MIT summary naming the file;
    EDF+ annotations that name no seizure mean a seizure-free recording."""
    if events:
        sz = seizures_from_events(events, path)
        if sz:
            return sz, "edf annotations"
    for cand, reader in side_label_files(path):
        if cand.exists():
            return reader(cand), cand.name
    for summ in sorted(path.parent.glob("*-summary.txt")):
        table = parse_chbmit_summary(summ)
        if path.name in table:
            return table[path.name], summ.name
    if events:
        return [], "edf annotations (no seizure)"
    return None, "none"


# ------------------------------------------------------------------------------------ patients of files
_NAMING = [
    ("CHB-MIT", re.compile(r"^(chb\d\d)[a-z]?_\d+", re.I)),
    ("TUH", re.compile(r"^([a-z0-9]{8})_s\d+_t\d+", re.I)),
    ("Siena", re.compile(r"^(PN\d\d)(?:-\d+)?$", re.I)),
    ("SeizeIT", re.compile(r"^(P_ID\d+)_r\d+", re.I)),
    ("BIDS", re.compile(r"^(sub-[A-Za-z0-9]+)_", re.I)),
]
#: CHB-MIT: "Case chb21 was obtained 1.5 years after case chb01, from the same female subject".
SAME_PERSON = {"chb21": "chb01"}


def patient_of(rel: Path, table: dict[str, str]) -> tuple[str, str]:
    """(patient, rule) for a recording at `rel` (relative to the data folder)."""
    key = rel.as_posix()
    for k in (key, rel.name, rel.stem):
        if k in table:
            return table[k], "patients.csv"
    for name, rx in _NAMING:
        m = rx.match(rel.stem)
        if m:
            pid = m.group(1)
            pid = pid.lower() if name in ("CHB-MIT", "TUH") else pid
            return SAME_PERSON.get(pid, pid), name
    if len(rel.parts) > 1:
        return rel.parts[0], "sub-folder"
    return rel.stem, "file stem"


def read_patients_csv(path: Path) -> dict[str, str]:
    rows = list(csv.DictReader(Path(path).read_text(errors="replace").splitlines()))
    if not rows or not {"file", "patient"} <= set(rows[0]):
        raise InputError(path, "patients.csv needs the columns file,patient", "one row per recording")
    return {r["file"].strip(): r["patient"].strip() for r in rows if r["file"].strip()}


def list_recordings(folder: Path) -> list[tuple[str, Path]]:
    """(patient, file) for every EDF/BDF under `folder` (see the module docstring for the grouping)."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in EDF_SUFFIXES and p.is_file())
    table = read_patients_csv(folder / "patients.csv") if (folder / "patients.csv").exists() else {}
    out, stems = [], []
    for f in files:
        rel = f.relative_to(folder)
        pid, rule = patient_of(rel, table)
        if rule == "file stem":
            stems.append(rel.name)
        out.append((pid, f))
    if stems:
        progress.log(f"seizure: {len(stems)} file(s) match no dataset naming and are each taken as one patient "
                     f"({', '.join(stems[:3])}{' ...' if len(stems) > 3 else ''}); a patients.csv (file,patient) groups them")
    return out


# ------------------------------------------------------------------------------------ EDF header, TALs
@dataclass
class EdfHeader:
    path: Path
    subtype: str  # "EDF", "EDF+C", "EDF+D", "BDF", "BDF+C", "BDF+D"
    n_header: int
    n_records: int
    record_s: float
    labels: list[str]
    spr: list[int]
    width: int  # bytes per sample (2 EDF, 3 BDF)

    @property
    def record_bytes(self) -> int:
        return sum(self.spr) * self.width

    @property
    def annotation_signals(self) -> list[int]:
        return [i for i, lab in enumerate(self.labels) if lab.strip() in ("EDF Annotations", "BDF Annotations")]

    @property
    def discontinuous(self) -> bool:
        return self.subtype.endswith("+D")


def read_edf_header(path: Path) -> EdfHeader:
    """Parse and check the fixed EDF/BDF header fields MNE tolerates silently: the data-record duration
    (which sets the sampling rate), the EDF+C/EDF+D subtype, and the file length the header promises."""
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
        reserved = raw[192:236].decode("ascii", errors="replace").strip().upper()
        labels = [raw[256 + 16 * i: 256 + 16 * i + 16].decode("ascii", errors="replace").strip() for i in range(ns)]
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
    bdf = raw[:1] == b"\xff"
    width = 3 if bdf else 2
    base = "BDF" if bdf else "EDF"
    subtype = base + ("+D" if reserved.startswith(("EDF+D", "BDF+D")) else
                      "+C" if reserved.startswith(("EDF+C", "BDF+C")) else "")
    expected = n_header + n_records * sum(spr) * width
    if n_records > 0 and size < expected:
        have = (size - n_header) // max(1, sum(spr) * width)
        raise InputError(path, f"corrupt EDF: file is truncated ({have} of {n_records} data records)",
                         "a complete EDF/EDF+/BDF file")
    return EdfHeader(Path(path), subtype, n_header, n_records, dur, labels, spr, width)


_TAL = re.compile(rb"([+-]\d+(?:\.\d*)?)(?:\x15(\d+(?:\.\d*)?))?\x14((?:[^\x00]*?))\x14?\x00", re.S)


def read_tals(h: EdfHeader) -> tuple[np.ndarray, list[tuple[float, float, str]]]:
    """EDF+ time-stamped annotation lists: (onset of every data record (s), [(onset, duration, text)]).
    Onsets are seconds from the file's start time. Files without an annotation signal give
    (record_index * record_s, [])."""
    n = h.n_records
    onsets = np.arange(n) * h.record_s
    sig = h.annotation_signals
    if not sig or n <= 0:
        return onsets, []
    events: list[tuple[float, float, str]] = []
    got = np.zeros(n, bool)
    for s in sig:
        a = sum(h.spr[:s]) * h.width
        size = h.spr[s] * h.width
        with open(h.path, "rb") as fh:  # only the annotation bytes of each record (a memory map of the
            texts_of = []                # whole file would count every touched page as resident memory)
            for r in range(n):
                fh.seek(h.n_header + r * h.record_bytes + a)
                texts_of.append(fh.read(size))
        for r in range(n):
            first = True
            for m in _TAL.finditer(texts_of[r]):
                onset = float(m.group(1))
                texts = [t for t in m.group(3).split(b"\x14") if t]
                if first and s == sig[0] and not got[r]:
                    onsets[r] = onset  # the time-keeping TAL that opens every record
                    got[r] = True
                    first = False
                    if not texts:
                        continue
                first = False
                dur = float(m.group(2)) if m.group(2) else 0.0
                for t in texts:
                    events.append((onset, dur, t.decode("utf-8", errors="replace").strip()))
    return onsets, events


def continuous_segments(h: EdfHeader, onsets: np.ndarray, tol: float = 1e-3) -> list[tuple[int, int, float]]:
    """[(first record, end record, onset s)] of the runs of records without a gap between them."""
    n = len(onsets)
    if n == 0:
        return []
    gap = np.flatnonzero(np.abs(np.diff(onsets) - h.record_s) > tol) + 1
    bounds = [0, *gap.tolist(), n]
    return [(a, b, float(onsets[a])) for a, b in zip(bounds[:-1], bounds[1:])]


# ---------------------------------------------------------------------------------------------- reading
class Recording:
    """One continuous recording (or one continuous segment of an EDF+D file) in the 18-channel bipolar
    montage, in volts, read lazily: ``read(start, stop)`` returns (18, stop - start) float32."""

    patient: str
    source: str
    fs: float
    n_samples: int
    seizures: list[tuple[float, float]] | None  # seconds from the segment start; None = no labels
    label_source: str
    montage: str

    @property
    def duration(self) -> float:
        return self.n_samples / self.fs

    def read(self, start: int = 0, stop: int | None = None) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def sample_labels(self) -> np.ndarray:
        return interval_labels(self.seizures or [], self.n_samples, self.fs)

    @property
    def x(self) -> np.ndarray:
        """The whole recording (small recordings and tests only)."""
        return self.read(0, self.n_samples)


class ArrayRecording(Recording):
    """A recording held in memory (built-in data, tests, benchmarks)."""

    def __init__(self, patient: str, source: str, x: np.ndarray, fs: float,
                 seizures: list[tuple[float, float]] | None = None, label_source: str = "given",
                 montage: str = "bipolar"):
        self.patient, self.source, self.fs = patient, source, float(fs)
        self._x = np.asarray(x, dtype=np.float32)
        self.n_samples = self._x.shape[1]
        self.seizures = seizures if seizures is None else list(seizures)
        self.label_source, self.montage = label_source, montage

    def read(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        return self._x[:, start: self.n_samples if stop is None else stop]


class EdfRecording(Recording):
    """A continuous run of data records of an EDF/EDF+/BDF file, read through MNE on demand."""

    def __init__(self, raw: Any, plan: list, montage: str, patient: str, source: str, fs: float, first: int,
                 n: int, seizures: list[tuple[float, float]] | None, label_source: str):
        self.raw, self.plan, self.montage = raw, plan, montage
        self.patient, self.source, self.fs = patient, source, fs
        self.first, self.n_samples = first, n
        self.seizures, self.label_source = seizures, label_source
        self.picks = sorted({i for i, j, _ in plan} | {j for _, j, _ in plan if j >= 0})
        self._pos = {c: k for k, c in enumerate(self.picks)}
        self._plan = [(self._pos[i], self._pos[j] if j >= 0 else -1, s) for i, j, s in plan]

    def read(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        stop = self.n_samples if stop is None else min(stop, self.n_samples)
        try:
            data = self.raw.get_data(picks=self.picks, start=self.first + start, stop=self.first + stop)
        except Exception as e:  # noqa: BLE001 - truncated data records
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise InputError(self.source, f"corrupt EDF data records ({first[:160]})",
                             "a complete EDF/EDF+/BDF file") from None
        x = apply_plan(data, self._plan)
        check_finite(x, BIPOLAR_NAMES, self.source)
        return x


def open_edf(path: str | Path, patient: str | None = None, labels: Path | None = None,
             require_labels: bool = False) -> list[EdfRecording]:
    """Open an EDF/EDF+/BDF file: one Recording per continuous segment (EDF+D files are split at gaps),
    each with its seizure labels (segment-relative). Reads headers and annotations only."""
    import mne

    path = Path(path)
    if not path.exists():
        raise InputError(path, "recording does not exist")
    if not path.is_file():
        raise InputError(path, "recording is not a regular file")
    if path.suffix.lower() not in EDF_SUFFIXES:
        raise InputError(path, f"unsupported file type '{path.suffix}'", "an .edf or .bdf recording")
    h = read_edf_header(path)
    reader = mne.io.read_raw_bdf if path.suffix.lower() == ".bdf" else mne.io.read_raw_edf
    try:
        raw = reader(str(path), preload=False, verbose="error")
    except Exception as e:  # noqa: BLE001 - MNE raises many types for a broken header
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise InputError(path, f"corrupt or unreadable EDF header ({first[:160]})", "a valid EDF/EDF+/BDF file") from None
    fs = validate_fs(float(raw.info["sfreq"]), path)
    n_total = int(raw.n_times)
    if n_total < fs:
        raise InputError(path, f"recording is only {n_total / fs:.2f} s long", "at least one 1-s window")
    plan, how = montage_plan(list(raw.ch_names), path)
    onsets, events = read_tals(h) if "+" in h.subtype else (np.arange(h.n_records) * h.record_s, [])
    if labels is not None:
        seizures, src = read_seizure_csv(labels), labels.name
    else:
        seizures, src = find_labels(path, events)
    if seizures is None and require_labels:
        raise InputError(path, "no seizure labels found (no EDF+ annotations, no <stem>.csv/.csv_bi/.tse/"
                               "_events.tsv/_a2.tsv beside it, not in a *-summary.txt)",
                         "labels for every recording used for training or evaluation (an empty <stem>.csv "
                         "says the recording has no seizure)")
    pid = patient or path.stem
    t0 = float(onsets[0]) if len(onsets) else 0.0
    if not h.discontinuous:
        sz = None if seizures is None else validate_seizures([(a - t0, b - t0) for a, b in seizures] if src ==
                                                             "edf annotations" else seizures, n_total / fs, path)
        return [EdfRecording(raw, plan, how, pid, str(path), fs, 0, n_total, sz, src)]
    spr = int(round(h.record_s * fs))
    segs = continuous_segments(h, onsets)
    out: list[EdfRecording] = []
    for k, (a, b, t_on) in enumerate(segs):
        n = (b - a) * spr
        sz = None
        if seizures is not None:
            # annotation times are file times; clip each seizure to this segment and re-time it
            sz = [(max(on, t_on) - t_on, min(off, t_on + n / fs) - t_on) for on, off in seizures
                  if off > t_on and on < t_on + n / fs]
            sz = validate_seizures(sz, n / fs, path)
        if n >= fs:
            out.append(EdfRecording(raw, plan, how, pid, f"{path}#seg{k + 1}@{t_on:g}s", fs, a * spr, n, sz, src))
    if seizures:
        covered = [(on, off) for on, off in seizures if any(off > t and on < t + (b - a) * h.record_s
                                                            for a, b, t in segs)]
        if len(covered) < len(seizures):
            progress.log(f"seizure: {path.name}: {len(seizures) - len(covered)} seizure annotation(s) fall in gaps of "
                         "this EDF+D file (no data there)")
    progress.log(f"seizure: {path.name} is EDF+D (discontinuous): {len(segs)} continuous segment(s), read separately")
    if not out:
        raise InputError(path, "EDF+D file has no continuous segment of at least one window", "longer segments")
    return out


def read_edf(path: str | Path, patient: str | None = None, labels: Path | None = None,
             require_labels: bool = False) -> Recording:
    """Read a continuous EDF/EDF+/BDF file into memory (the double-banana montage, validated).
    EDF+D files have several segments: use :func:`open_edf`."""
    segs = open_edf(path, patient, labels, require_labels)
    if len(segs) > 1:
        raise InputError(path, f"EDF+D file with {len(segs)} continuous segments", "open_edf() to read them separately")
    r = segs[0]
    x = r.read(0, r.n_samples)
    validate_signal(x, BIPOLAR_NAMES, path)
    return ArrayRecording(r.patient, r.source, x, r.fs, r.seizures, r.label_source, r.montage)


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


def interval_labels(seizures: list[tuple[float, float]], n: int, fs: float) -> np.ndarray:
    """Per-sample 0/1 labels: sample i (time i/fs) is 1 when onset <= i/fs < offset (vectorised)."""
    t = np.arange(n) / fs
    y = np.zeros(n, dtype=np.int8)
    for on, off in seizures:
        y[(t >= on) & (t < off)] = 1
    return y


def window_labels(seizures: list[tuple[float, float]], n_windows: int, win: int, fs: float) -> np.ndarray:
    """Majority label of each window of `win` samples at `fs` (a tie is non-seizure), computed from the
    intervals without a per-sample array: sample i is ictal when onset <= i/fs < offset."""
    count = np.zeros(n_windows, np.int64)
    k0 = np.arange(n_windows, dtype=np.int64) * win
    for on, off in merge_intervals(list(seizures)):
        a, b = math.ceil(on * fs - 1e-9), math.ceil(off * fs - 1e-9)  # first ictal sample, first after
        count += np.clip(np.minimum(b, k0 + win) - np.maximum(a, k0), 0, None)
    return (2 * count > win).astype(np.int8)


def make_windows(x: np.ndarray, y: np.ndarray, win: int) -> tuple[np.ndarray, np.ndarray]:
    """Non-overlapping windows (T, C, win) and their majority labels (T,); a trailing partial window is
    dropped; a tie (exactly half seizure samples) counts as non-seizure."""
    t = x.shape[1] // win
    xw = x[:, : t * win].reshape(x.shape[0], t, win).transpose(1, 0, 2)
    yw = (y[: t * win].reshape(t, win).astype(np.float32).mean(axis=1) > 0.5).astype(np.int8)
    return np.ascontiguousarray(xw), yw


# ----------------------------------------------------------------------------------------------- filter
@lru_cache(maxsize=16)
def fir_taps(fs: float, l_freq: float, h_freq: float) -> np.ndarray:
    """The zero-phase FIR band-pass MNE designs by default (firwin, Hamming, automatic length and
    transition bands) at rate `fs`."""
    import mne

    n = int(max(64, 10 * fs))
    return mne.filter.create_filter(np.zeros(n), fs, l_freq, h_freq, method="fir", phase="zero",
                                    fir_window="hamming", fir_design="firwin", verbose="error")


@lru_cache(maxsize=32)
def _response(n_fft: int, fs: float, l_freq: float, h_freq: float) -> np.ndarray:
    """Real (zero-phase) frequency response of the centred FIR on the rfft grid of length n_fft at fs."""
    import scipy.fft as sf

    h = fir_taps(fs, l_freq, h_freq)
    half = len(h) // 2
    hh = np.zeros(n_fft)
    hh[: half + 1] = h[half:]
    hh[n_fft - half:] = h[:half]
    return sf.rfft(hh).real.astype(np.float32)


def _odd_pad(x: np.ndarray, left: int, right: int) -> np.ndarray:
    """MNE's 'reflect_limited' padding: odd reflection about the end samples, zeros beyond the signal length."""
    n = x.shape[1]
    parts = []
    if left:
        ll = min(left, n - 1)
        parts += [np.zeros((x.shape[0], left - ll), x.dtype), 2 * x[:, :1] - x[:, ll:0:-1]]
    parts.append(x)
    if right:
        rr = min(right, n - 1)
        parts += [2 * x[:, -1:] - x[:, -2:-rr - 2:-1], np.zeros((x.shape[0], right - rr), x.dtype)]
    return np.concatenate(parts, axis=1) if len(parts) > 1 else x


def _ratio(fs_in: float, fs_out: float) -> tuple[int, int]:
    r = Fraction(fs_out / fs_in).limit_denominator(10000)
    return r.numerator, r.denominator


def fft_filter(x: np.ndarray, fs_in: float, fs_out: float, l_freq: float, h_freq: float,
               pad_left: bool = True, pad_right: bool = True, workers: int = 1) -> np.ndarray:
    """Resample `x` (C, n) from fs_in to fs_out and band-pass it, in one rfft/irfft pair: the spectrum is
    multiplied by the response of MNE's zero-phase FIR (designed at fs_out) and truncated or zero-padded
    to the output rate. The ends are odd-reflected over half the filter length (as MNE pads), unless
    pad_left/pad_right is False (a chunk whose neighbouring samples are already included as margin).
    Without resampling this equals ``mne.filter.filter_data(x, fs, l, h)`` to float32 precision."""
    import scipy.fft as sf

    x = np.asarray(x, dtype=np.float32)
    up, down = _ratio(fs_in, fs_out)
    half_out = len(fir_taps(fs_out, l_freq, h_freq)) // 2
    pad = down * math.ceil(half_out * fs_in / fs_out / down) if (pad_left or pad_right) else 0
    pl, pr = (pad if pad_left else 0), (pad if pad_right else 0)
    xp = _odd_pad(x, pl, pr)
    n_in = xp.shape[1]
    q = sf.next_fast_len(math.ceil(n_in / down), real=True)
    n_fft_in, n_fft_out = q * down, q * up
    spec = sf.rfft(xp, n=n_fft_in, axis=1, workers=workers)
    del xp
    resp = _response(n_fft_out, fs_out, l_freq, h_freq)
    if up == down:
        spec *= resp
        y = sf.irfft(spec, n=n_fft_out, axis=1, workers=workers, overwrite_x=True)
    else:
        k = min(spec.shape[1], n_fft_out // 2 + 1)
        out = np.zeros((x.shape[0], n_fft_out // 2 + 1), np.complex64)
        np.multiply(spec[:, :k], resp[:k] * np.float32(up / down), out=out[:, :k])
        del spec
        y = sf.irfft(out, n=n_fft_out, axis=1, workers=workers, overwrite_x=True)
    a = pl * up // down
    n_out = int(round(x.shape[1] * up / down))
    return y[:, a: a + n_out].astype(np.float32, copy=False)


def bandpass_resample(x: np.ndarray, fs: float, pre: PreprocessConfig) -> tuple[np.ndarray, float]:
    """Resample (when `pre.fs` differs) and 8-30 Hz band-pass a whole array; returns (x, out_fs)."""
    out_fs = float(pre.fs) if pre.fs and abs(pre.fs - fs) > 1e-6 else float(fs)
    return fft_filter(x, fs, out_fs, pre.l_freq, pre.h_freq), out_fs


# -------------------------------------------------------------------------------------- standardisation
def window_stats(y: np.ndarray, win: int) -> tuple[np.ndarray, np.ndarray]:
    """Per window and channel mean and SD of a filtered chunk (C, T*win) -> two (T, C) float64 arrays."""
    t = y.shape[1] // win
    w = y[:, : t * win].reshape(y.shape[0], t, win)
    m = w.mean(axis=2)
    sd = w.std(axis=2)
    return m.T.astype(np.float64), sd.T.astype(np.float64)


def robust_stats(means: np.ndarray, sds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(centre, scale) per channel: the median window mean and the median window SD."""
    centre = np.median(means, axis=0)
    scale = np.median(sds, axis=0)
    return centre.astype(np.float32), np.where(scale > 0, scale, 1.0).astype(np.float32)


def zscore_stats(means: np.ndarray, sds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, SD) per channel over all windows, from the window means and SDs (exact)."""
    mu = means.mean(axis=0)
    var = (sds ** 2 + means ** 2).mean(axis=0) - mu ** 2
    sd = np.sqrt(np.maximum(var, 0))
    return mu.astype(np.float32), np.where(sd > 0, sd, 1.0).astype(np.float32)


class MovingStats:
    """Exponential moving mean and variance over windows (braindecode's exponential moving
    standardisation, at window resolution): alpha = window_s / moving_s; initialised with the robust
    statistics of the first min(60, T) windows; window t is scaled by the statistics up to and
    including it. State carries across chunks, so a recording streams in one pass."""

    def __init__(self, window_s: float, moving_s: float):
        self.alpha = min(1.0, window_s / moving_s)
        self.mu: np.ndarray | None = None
        self.var: np.ndarray | None = None

    def __call__(self, means: np.ndarray, sds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(T, C) window stats -> per-window centre and scale (T, C)."""
        if self.mu is None:
            c, s = robust_stats(means[:60], sds[:60])
            self.mu, self.var = c.astype(np.float64), s.astype(np.float64) ** 2
        mu_out, sd_out = np.empty_like(means), np.empty_like(sds)
        a = self.alpha
        for t in range(len(means)):
            self.mu = (1 - a) * self.mu + a * means[t]
            self.var = (1 - a) * self.var + a * (sds[t] ** 2 + (means[t] - self.mu) ** 2)
            mu_out[t], sd_out[t] = self.mu, np.sqrt(self.var)
        return mu_out, np.where(sd_out > 0, sd_out, 1.0)


def standardise(x: np.ndarray) -> np.ndarray:
    """Zero mean, unit SD per channel (rows): the paper's per-recording z-score."""
    mu = x.mean(axis=1, keepdims=True)
    sd = x.std(axis=1, keepdims=True)
    return ((x - mu) / np.where(sd > 0, sd, 1.0)).astype(np.float32)


# ------------------------------------------------------------------------------------- the preprocessor
def output_rate(fs: float, pre: PreprocessConfig) -> float:
    return float(pre.fs) if pre.fs and abs(pre.fs - fs) > 1e-6 else float(fs)


def window_samples(fs_out: float, pre: PreprocessConfig) -> int:
    return int(round(pre.window_s * fs_out))


def filtered_chunks(rec: Recording, pre: PreprocessConfig, workers: int = 1
                    ) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
    """Yield (first window index, filtered chunk (C, m*win) at the output rate, per-channel min, max of
    the raw chunk) over the recording, in chunks of about ``pre.chunk_s`` seconds with margins of real
    neighbouring data (odd reflection only at the recording's ends)."""
    fs = rec.fs
    fs_out = output_rate(fs, pre)
    win = window_samples(fs_out, pre)
    n_out = int(round(rec.n_samples * fs_out / fs))
    n_win = n_out // win
    up, down = _ratio(fs, fs_out)
    win_in = win * down / up
    chunk_w = max(1, int(pre.chunk_s / pre.window_s))
    if n_win <= chunk_w or abs(win_in - round(win_in)) > 1e-9:
        x = rec.read(0, rec.n_samples)
        y = fft_filter(x, fs, fs_out, pre.l_freq, pre.h_freq, workers=workers)
        yield 0, y[:, : n_win * win], x.min(axis=1), x.max(axis=1)
        return
    win_in = int(round(win_in))
    half = len(fir_taps(fs_out, pre.l_freq, pre.h_freq)) // 2
    margin_w = math.ceil(2 * half / win) + 2  # margin in whole windows (>= the filter length)
    for k0 in range(0, n_win, chunk_w):
        k1 = min(n_win, k0 + chunk_w)
        a, b = max(0, k0 - margin_w), min(n_win, k1 + margin_w)
        s0, s1 = a * win_in, min(rec.n_samples, b * win_in)
        x = rec.read(s0, s1)
        y = fft_filter(x, fs, fs_out, pre.l_freq, pre.h_freq, pad_left=(a == 0), pad_right=(b == n_win),
                       workers=workers)
        lo, hi = (k0 - a) * win, (k1 - a) * win
        core = (s0 + (k0 - a) * win_in, s0 + (k1 - a) * win_in)
        xr = x[:, core[0] - s0: core[1] - s0]
        yield k0, y[:, lo:hi], xr.min(axis=1), xr.max(axis=1)


def n_windows(rec: Recording, pre: PreprocessConfig) -> int:
    fs_out = output_rate(rec.fs, pre)
    return int(round(rec.n_samples * fs_out / rec.fs)) // window_samples(fs_out, pre)


def _to_windows(y: np.ndarray, win: int, centre: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """(C, T*win) filtered chunk -> standardised windows (T, C, win), standardising in place first."""
    y -= centre.astype(np.float32)[:, None]
    y *= (1.0 / scale).astype(np.float32)[:, None]
    t = y.shape[1] // win
    return np.ascontiguousarray(y[:, : t * win].reshape(y.shape[0], t, win).transpose(1, 0, 2))


def recording_windows(rec: Recording, pre: PreprocessConfig, workers: int = 1, keep_mb: float = 256.0,
                      standardise: bool = True) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (first window index, standardised windows (m, 18, win) float32) over a recording, in chunks.

    robust / zscore need the whole recording's statistics: a first pass over the chunks collects the
    window statistics, a second standardises; the filtered chunks are kept between the passes when
    they total at most `keep_mb` MB (one hour at 500 Hz is 130 MB), else filtered again (a day at 256 Hz,
    318 MB, is read twice instead). moving streams
    in one pass. Flat channels are an input error before anything is yielded (robust, zscore) or at the
    end (moving). ``standardise=False`` yields the filtered windows in volts (for a model that carries
    its training fold's statistics)."""
    fs_out = output_rate(rec.fs, pre)
    win = window_samples(fs_out, pre)
    if not standardise:
        lo_all, hi_all = None, None
        for k0, y, lo, hi in filtered_chunks(rec, pre, workers):
            lo_all = lo if lo_all is None else np.minimum(lo_all, lo)
            hi_all = hi if hi_all is None else np.maximum(hi_all, hi)
            yield k0, _to_windows(y, win, np.zeros(y.shape[0]), np.ones(y.shape[0]))
        check_not_flat(lo_all, hi_all, BIPOLAR_NAMES, rec.source)
        return
    if pre.standardise == "moving":
        ms = MovingStats(pre.window_s, pre.moving_s)
        lo_all, hi_all = None, None
        for k0, y, lo, hi in filtered_chunks(rec, pre, workers):
            m, s = window_stats(y, win)
            c, sc = ms(m, s)
            lo_all = lo if lo_all is None else np.minimum(lo_all, lo)
            hi_all = hi if hi_all is None else np.maximum(hi_all, hi)
            t = y.shape[1] // win
            w = y.reshape(y.shape[0], t, win).transpose(1, 0, 2)
            yield k0, ((w - c[:, :, None].astype(np.float32)) / sc[:, :, None].astype(np.float32)).astype(np.float32)
        check_not_flat(lo_all, hi_all, BIPOLAR_NAMES, rec.source)
        return
    keep = n_windows(rec, pre) * 18 * win * 4 <= keep_mb * 2**20
    kept: list[tuple[int, np.ndarray]] = []
    means, sds, lo_all, hi_all = [], [], None, None
    for k0, y, lo, hi in filtered_chunks(rec, pre, workers):
        m, s = window_stats(y, win)
        means.append(m)
        sds.append(s)
        lo_all = lo if lo_all is None else np.minimum(lo_all, lo)
        hi_all = hi if hi_all is None else np.maximum(hi_all, hi)
        if keep:
            kept.append((k0, y))
    check_not_flat(lo_all, hi_all, BIPOLAR_NAMES, rec.source)
    M, S = np.concatenate(means), np.concatenate(sds)
    c, sc = robust_stats(M, S) if pre.standardise == "robust" else zscore_stats(M, S)
    it = kept if keep else ((k0, y) for k0, y, _, _ in filtered_chunks(rec, pre, workers))
    for k0, y in it:
        yield k0, _to_windows(y, win, c, sc)


def preprocess_recording(rec: Recording, pre: PreprocessConfig) -> PatientWindows:
    """All windows of a (short) recording in memory: filtered, standardised, labelled."""
    fs_out = output_rate(rec.fs, pre)
    win = window_samples(fs_out, pre)
    parts = [w for _, w in recording_windows(rec, pre)]
    X = np.concatenate(parts) if parts else np.zeros((0, 18, win), np.float32)
    y = window_labels(rec.seizures or [], len(X), win, fs_out)
    return PatientWindows(rec.patient, X, y, np.arange(len(y)) * pre.window_s, fs_out, list(rec.seizures or []),
                          rec.duration, rec.source)


@dataclass
class PatientWindows:
    """The windows of one recording (or one patient of a windowed set), in time order."""

    patient: str
    X: np.ndarray  # (T, 18, L) float32
    y: np.ndarray  # (T,) int8
    t0: np.ndarray  # (T,) window start, seconds
    fs: float
    seizures: list[tuple[float, float]]
    duration: float
    source: str = ""
    cls: int = -1  # the class every window of this patient holds (Helsinki), -1 = mixed


# ------------------------------------------------------------------------------------------ window store
class WindowStore:
    """The training units' view of a prepared data set: one memory-mapped array per recording (or per
    patient of a windowed set), never one array of everything.

    ``kind`` is 'recordings' (continuous recordings: sequences, events) or 'windows' (isolated windows:
    CHB-MIT pieces, Helsinki; no sequence model, standardised per fold). ``entries[i]`` holds the
    entry's patient, source, number of windows, seizures (entry seconds), duration."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        meta = json.loads((self.folder / "meta.json").read_text())
        self.meta = meta
        self.kind: str = meta["kind"]
        self.fs: float = meta["fs"]
        self.window: int = meta["window_samples"]
        self.window_s: float = meta["window_s"]
        self.entries: list[dict] = meta["entries"]
        self.dataset: str = meta.get("dataset", "")
        self._y = [np.load(self.folder / f"y{i:05d}.npy") for i in range(len(self.entries))]

    # ---- lookup
    @property
    def patients(self) -> list[str]:
        return list(dict.fromkeys(e["patient"] for e in self.entries))

    def entries_of(self, patients: list[str] | set[str]) -> list[int]:
        ps = set(patients)
        return [i for i, e in enumerate(self.entries) if e["patient"] in ps]

    def X(self, i: int) -> np.ndarray:
        return np.load(self.folder / f"X{i:05d}.npy", mmap_mode="r")

    def y(self, i: int) -> np.ndarray:
        return self._y[i]

    def n(self, ids: list[int]) -> int:
        return int(sum(len(self._y[i]) for i in ids))

    def labels(self, ids: list[int]) -> np.ndarray:
        return np.concatenate([self._y[i] for i in ids]) if ids else np.zeros(0, np.int8)

    def patient_class(self, p: str) -> int:
        ys = self.labels(self.entries_of([p]))
        return int(ys[0]) if len(ys) and (ys == ys[0]).all() else -1

    def gather(self, ids: list[int]) -> np.ndarray:
        """All windows of the entries `ids` in memory (small sets; training batches use `batch`)."""
        return np.concatenate([np.asarray(self.X(i)) for i in ids]) if ids else np.zeros((0, 18, self.window), np.float32)


def write_store(folder: Path, entries: list[PatientWindows], kind: str, dataset: str, pre: PreprocessConfig,
                extra: dict | None = None) -> Path:
    """Write a window store from in-memory windows (one entry each)."""
    w = StoreWriter(folder, kind, dataset, pre, entries[0].fs if entries else pre.fs, extra)
    for e in entries:
        w.add(e.patient, e.source, e.X, e.y, e.seizures, e.duration, cls=e.cls)
    return w.close()


class StoreWriter:
    """Writes a WindowStore entry by entry; a recording's windows can be appended chunk by chunk."""

    def __init__(self, folder: Path, kind: str, dataset: str, pre: PreprocessConfig, fs: float,
                 extra: dict | None = None, standardise: bool = True):
        self.standardise = standardise
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.kind, self.dataset, self.pre, self.fs = kind, dataset, pre, fs
        self.entries: list[dict] = []
        self.extra = extra or {}
        self.window = window_samples(fs, pre) if fs else 0

    def add(self, patient: str, source: str, X: np.ndarray, y: np.ndarray, seizures: list, duration: float,
            cls: int = -1, **info: Any) -> None:
        i = len(self.entries)
        np.save(self.folder / f"X{i:05d}.npy", np.ascontiguousarray(X, dtype=np.float32))
        np.save(self.folder / f"y{i:05d}.npy", np.asarray(y, np.int8))
        self.window = int(X.shape[2]) if X.ndim == 3 else self.window
        self.entries.append({"patient": patient, "source": source, "n": int(len(y)),
                             "seizures": [list(map(float, s)) for s in seizures], "duration": float(duration),
                             "cls": int(cls), **info})

    def add_recording(self, rec: Recording) -> None:
        """Stream one recording into the store (filtered, standardised, labelled), chunk by chunk."""
        fs_out = output_rate(rec.fs, self.pre)
        if self.fs and abs(fs_out - self.fs) > 1e-6:
            raise InputError(rec.source, f"sampling rate {fs_out:g} Hz differs from the other recordings' "
                                         f"{self.fs:g} Hz (preprocess.fs = 0 keeps native rates)",
                             "one rate for all recordings, or preprocess.fs > 0 to resample them all")
        self.fs = fs_out
        win = window_samples(fs_out, self.pre)
        T = n_windows(rec, self.pre)
        i = len(self.entries)
        tmp = self.folder / f"X{i:05d}.tmp.npy"
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(T, 18, win))
        for k0, w in recording_windows(rec, self.pre, standardise=self.standardise):
            arr[k0: k0 + len(w)] = w
        arr.flush()
        del arr
        tmp.replace(self.folder / f"X{i:05d}.npy")
        y = window_labels(rec.seizures or [], T, win, fs_out)
        np.save(self.folder / f"y{i:05d}.npy", y)
        self.window = win
        self.entries.append({"patient": rec.patient, "source": rec.source, "n": int(T),
                             "seizures": [list(map(float, s)) for s in (rec.seizures or [])],
                             "duration": float(T * self.pre.window_s), "cls": -1,
                             "label_source": rec.label_source, "native_fs": rec.fs})

    def close(self) -> Path:
        meta = {"kind": self.kind, "dataset": self.dataset, "fs": self.fs, "window_samples": self.window,
                "window_s": self.pre.window_s, "standardise": (self.pre.standardise if self.standardise else "none (volts)")
                if self.kind == "recordings" else "training-fold robust", "entries": self.entries, **self.extra}
        (self.folder / "meta.json").write_text(json.dumps(meta, indent=1))
        return self.folder


def fold_norm(store: WindowStore, train_ids: list[int], batch: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Windowed sets: (centre, scale) per channel from the training entries' windows only (robust:
    median window mean, median window SD), so no test patient's scaling depends on its labels. Reads
    `batch` windows at a time."""
    means, sds = [], []
    for i in train_ids:
        X = store.X(i)
        for k in range(0, len(X), batch):
            x = np.asarray(X[k: k + batch], dtype=np.float32)
            means.append(x.mean(axis=2, dtype=np.float64))
            sds.append(x.std(axis=2, dtype=np.float64))
    return robust_stats(np.concatenate(means), np.concatenate(sds))


def apply_norm(X: np.ndarray, norm: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray:
    """Windows standardised with (centre, scale) per channel, or as they are (a writable float32 array)."""
    if norm is None:
        a = np.asarray(X, dtype=np.float32)
        return a if a.flags.writeable else a.copy()
    c, s = norm
    return ((np.asarray(X, dtype=np.float32) - np.asarray(c, np.float32)[None, :, None])
            / np.asarray(s, np.float32)[None, :, None]).astype(np.float32)


# -------------------------------------------------------------------------------------- CHB-MIT windows
CHB_FS = 256.0


def is_chbmit_windows(folder: Path) -> bool:
    return any(Path(folder).glob("chb*/ictal/*.npy"))


def load_chbmit_windows(folder: Path, pre: PreprocessConfig, patients: list[str] | None = None
                        ) -> list[PatientWindows]:
    """CHB-MIT 10-s windows: per record its pre-onset window (label 0) then its ictal window (label 1).

    Each 10-s segment is band-passed (and resampled) on its own (segments are not contiguous) and cut
    into 1-s windows (10 per segment), kept in volts: standardisation happens per fold from the training
    patients' windows (the label is a function of position here: pre-onset piece, then ictal piece)."""
    folder = Path(folder)
    out = []
    for pdir in sorted(d for d in folder.glob("chb*") if d.is_dir()):
        if patients and pdir.name not in patients:
            continue
        names = _summary_channels(pdir)
        Xs, ys, srcs = [], [], []
        fs_out = output_rate(CHB_FS, pre)
        win = window_samples(fs_out, pre)
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
                y = fft_filter(x, CHB_FS, fs_out, pre.l_freq, pre.h_freq)
                t = y.shape[1] // win
                Xs.append(np.ascontiguousarray(y[:, : t * win].reshape(18, t, win).transpose(1, 0, 2)))
                ys.append(np.full(t, lab, np.int8))
                srcs.append(f.name)
        if not Xs:
            continue
        X, y = np.concatenate(Xs), np.concatenate(ys)
        out.append(PatientWindows(pdir.name, X, y, np.arange(len(y)) * pre.window_s, fs_out, [],
                                  len(y) * pre.window_s, ";".join(srcs)))
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


# ------------------------------------------------------------------------------------ Helsinki windows
HELSINKI_FS = 64.0
#: from SOURCE.md (the window extraction's order): infants with seizure windows, and seizure-free infants
HELSINKI_SEIZURE_INFANTS = [1, 4, 5, 7, 9, 11, 13, 14, 15, 16, 17, 19, 20, 21, 22, 25, 31, 34, 36, 38, 39, 40, 41, 44,
                            47, 50, 51, 52, 62, 63, 66, 67, 69, 71, 73, 75, 76, 77, 78, 79]
HELSINKI_FREE_INFANTS = [3, 10, 18, 27, 28, 29, 30, 32, 35, 37, 42, 45, 48, 49, 53, 55, 57, 58, 59, 60, 70, 72]
HELSINKI_NEG_PER_INFANT = 18
HELSINKI_FILES = {"A": ("expert_A_1sec_1chunk_64Hz.hdf5", "annotations_2017_A_fixed.csv"),
                  "B": ("expert_B_1sec_1chunk_64Hz.hdf5", "annotations_2017_B.csv")}


def is_helsinki(folder: Path) -> bool:
    return any((Path(folder) / f).exists() for f, _ in HELSINKI_FILES.values())


def helsinki_events(csv_path: Path) -> dict[int, list[int]]:
    """{infant: [onset second of each seizure event]} from an expert's per-second annotation CSV
    (79 columns = infants 1..79, one row per second, empty cells after a recording's end)."""
    try:
        rows = list(csv.reader(Path(csv_path).read_text().splitlines()))
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(csv_path, f"unreadable annotation CSV ({e})") from None
    try:
        infants = [int(h) for h in rows[0]]
    except (ValueError, IndexError):
        raise InputError(csv_path, "header is not the infant numbers 1..79", "the Helsinki annotation CSV") from None
    out: dict[int, list[int]] = {}
    for j, inf in enumerate(infants):
        col = [r[j].strip() if j < len(r) else "" for r in rows[1:]]
        while col and col[-1] == "":
            col.pop()
        try:
            v = np.array([int(float(c)) for c in col], dtype=np.int8)
        except ValueError:
            raise InputError(csv_path, f"infant {inf}: a cell is neither 0, 1 nor empty", "0/1 per second") from None
        if not set(np.unique(v).tolist()) <= {0, 1}:
            raise InputError(csv_path, f"infant {inf}: labels other than 0/1", "0/1 per second")
        out[inf] = np.flatnonzero(np.diff(np.concatenate([[0], v])) == 1).tolist()
    return out


def load_helsinki(folder: Path, pre: PreprocessConfig, expert: str = "A") -> list[PatientWindows]:
    """Helsinki neonatal 1-s windows of one expert, grouped by infant (h5py).

    ``FINAL_mtx``: 64 rows per window at 64 Hz, columns 0-17 the bipolar channels (volts), column 18 the
    label. The seizure windows come first: the first second of every seizure event of that expert,
    infants in HELSINKI_SEIZURE_INFANTS order, so window k belongs to the infant whose cumulative event
    count (counted in the expert's CSV) passes k. Then 18 windows per seizure-free infant in
    HELSINKI_FREE_INFANTS order. The counts are checked against the file; a mismatch is an input error.
    Note: 64 Hz came from keeping every 4th sample without an anti-alias filter, so activity above 32 Hz
    folds into the 8-30 Hz band; the band edge (30 Hz) sits just below Nyquist. Each window is
    band-passed on its own."""
    import h5py

    folder = Path(folder)
    h5_name, csv_name = HELSINKI_FILES[expert]
    h5_path, csv_path = folder / h5_name, folder / csv_name
    for p in (h5_path, csv_path):
        if not p.exists():
            raise InputError(p, f"Helsinki file for expert {expert} not found", f"{h5_name} and {csv_name}")
    try:
        with h5py.File(h5_path, "r") as f:
            if "FINAL_mtx" not in f:
                raise InputError(h5_path, f"no dataset FINAL_mtx (found {list(f)})", "the Helsinki window file")
            ds = f["FINAL_mtx"]
            m = np.asarray(ds[:], dtype=np.float64)
            cols = [c.decode() if isinstance(c, bytes) else str(c) for c in ds.attrs.get("columns", [])]
    except OSError as e:
        raise InputError(h5_path, f"not a readable HDF5 file ({e})") from None
    fsi = int(HELSINKI_FS)
    if m.ndim != 2 or m.shape[1] != 19 or m.shape[0] % fsi:
        raise InputError(h5_path, f"FINAL_mtx has shape {m.shape}", f"(n*{fsi}, 19): 18 channels + label, {fsi} rows per window")
    names = cols[:18] if len(cols) >= 18 else ["Fp2-F4", "F4-C4", "C4-P4", "P4-O2", "Fp1-F3", "F3-C3", "C3-P3", "P3-O1",
                                                "Fp2-F8", "F8-T4", "T4-T6", "T6-O2", "Fp1-F7", "F7-T3", "T3-T5", "T5-O1",
                                                "Fz-Cz", "Cz-Pz"]
    n_win = m.shape[0] // fsi
    lab = m[:, 18].reshape(n_win, fsi)
    if not (lab == lab[:, :1]).all() or not np.isin(lab[:, 0], (0, 1)).all():
        raise InputError(h5_path, "the label column changes inside a window or is not 0/1", "one 0/1 label per window")
    y = lab[:, 0].astype(np.int8)
    n_pos = int(y.sum())
    if not (y[:n_pos] == 1).all():
        raise InputError(h5_path, "seizure windows are not all before the non-seizure windows", "the documented order")
    events = helsinki_events(csv_path)
    counts = [len(events.get(i, [])) for i in HELSINKI_SEIZURE_INFANTS]
    if sum(counts) != n_pos or min(counts) < 1:
        raise InputError(csv_path, f"{sum(counts)} seizure events for the listed infants but {n_pos} seizure windows "
                                   f"in {h5_name}", "one seizure window per annotated event")
    busy = [i for i in HELSINKI_FREE_INFANTS if events.get(i)]
    if busy or n_win - n_pos != HELSINKI_NEG_PER_INFANT * len(HELSINKI_FREE_INFANTS):
        raise InputError(h5_path, f"{n_win - n_pos} non-seizure windows (free infants with events: {busy})",
                         f"{HELSINKI_NEG_PER_INFANT} per seizure-free infant x {len(HELSINKI_FREE_INFANTS)}")
    x = m[:, :18].reshape(n_win, fsi, 18).transpose(0, 2, 1)  # (n, 18 file channels, 64)
    plan, _ = montage_plan(names, h5_path)
    fs_out = output_rate(HELSINKI_FS, pre)
    win = window_samples(fs_out, pre)
    # all windows filtered at once along the last axis: (n*18, 64) rows are independent
    xm = np.stack([s * x[:, i] if j < 0 else x[:, i] - x[:, j] for i, j, s in plan], axis=1)  # (n, 18, 64)
    check_finite(xm.transpose(1, 0, 2).reshape(18, -1), BIPOLAR_NAMES, h5_path)
    filt = fft_filter(xm.reshape(-1, fsi), HELSINKI_FS, fs_out, pre.l_freq, pre.h_freq).reshape(n_win, 18, -1)
    if filt.shape[2] < win:
        raise InputError("config key 'preprocess.window_s'", f"{pre.window_s} s windows", "1-s windows for Helsinki")
    filt = filt[:, :, :win]
    infant = np.concatenate([np.repeat(HELSINKI_SEIZURE_INFANTS, counts),
                             np.repeat(HELSINKI_FREE_INFANTS, HELSINKI_NEG_PER_INFANT)])
    out = []
    for inf in list(HELSINKI_SEIZURE_INFANTS) + list(HELSINKI_FREE_INFANTS):
        sel = infant == inf
        cls = 1 if inf in HELSINKI_SEIZURE_INFANTS else 0
        onsets = events.get(inf, [])
        out.append(PatientWindows(f"infant{inf:02d}", np.ascontiguousarray(filt[sel], dtype=np.float32), y[sel],
                                  np.arange(int(sel.sum()), dtype=float), fs_out, [], float(sel.sum()),
                                  f"{h5_name} ({expert}); seizure onsets (s): {onsets[:50]}" if cls else
                                  f"{h5_name} ({expert}); random non-seizure seconds", cls=cls))
    return out


# ------------------------------------------------------------------------------------------ resolution
def resolve_dataset(path: Path, prefer: str = "auto") -> tuple[str, Path]:
    """('chbmit_windows' | 'helsinki' | 'edf', folder) for a data path (the eeg root, a dataset folder,
    an EDF folder or file). The eeg root holds both windowed sets: `prefer` picks one (auto: CHB-MIT)."""
    path = Path(path)
    if path.is_file():
        return "edf", path
    subs = {"chbmit_windows": path / "chbmit_windows", "helsinki": path / "helsinki_neonatal_windows"}
    if prefer == "edf":
        return "edf", path
    if prefer in subs and subs[prefer].is_dir():
        path = subs[prefer]
    elif prefer == "auto" and subs["chbmit_windows"].is_dir() and is_chbmit_windows(subs["chbmit_windows"]):
        return "chbmit_windows", subs["chbmit_windows"]
    if is_chbmit_windows(path):
        return "chbmit_windows", path
    if is_helsinki(path):
        return "helsinki", path
    if prefer in subs:
        raise InputError(path, f"no {prefer} data here", f"the eeg data root or the {prefer} folder")
    return "edf", path


def prepare_data(cfg: Any, out: Path, data_path: Path, standardise: bool = True, min_patients: int = 2,
                 builtin: bool = False) -> Path:
    """Read the data once, preprocess, and write the window store under `out`; returns it.

    `data_path`: EDF/BDF recordings (a folder, grouped into patients, or one file), the CHB-MIT windows,
    or the Helsinki windows (the built-in cohort is an EDF folder written by synthetic.builtin_data).
    Windowed sets are stored in volts (standardised per fold); ``standardise=False`` does the same for
    recordings."""
    cache = Path(out)
    if (cache / "meta.json").exists():
        return cache
    pre = cfg.preprocess
    kind, folder = resolve_dataset(data_path, "edf" if builtin else getattr(cfg, "dataset", "auto"))
    progress.log(f"seizure: reading {kind} from {folder}")
    if kind in ("chbmit_windows", "helsinki"):
        if kind == "chbmit_windows":
            entries = load_chbmit_windows(folder, pre, cfg.patients or None)
        else:
            entries = load_helsinki(folder, pre, cfg.helsinki.expert)
        entries = _select(entries, cfg.patients, data_path)
        write_store(cache, entries, "windows", kind, pre)
    else:
        files = [(None, folder)] if folder.is_file() else list_recordings(folder)
        if not files:
            raise InputError(folder, "no .edf or .bdf recordings found", "a folder of EDF/BDF files")
        recs: list[Recording] = []
        for pid, f in files:
            recs += open_edf(f, pid, require_labels=True)  # every label and header checked before any work
        if cfg.patients:
            have = {r.patient for r in recs}
            unknown = sorted(set(cfg.patients) - have)
            if unknown:
                raise InputError("config key 'patients'", f"unknown patients {unknown}",
                                 "names among " + ", ".join(sorted(have)))
            recs = [r for r in recs if r.patient in cfg.patients]
        rates = sorted({output_rate(r.fs, pre) for r in recs})
        if len(rates) > 1:
            ex = {output_rate(r.fs, pre): r.source for r in recs}
            raise InputError("config key 'preprocess.fs'", "0 keeps native rates, but the recordings have "
                             + ", ".join(f"{fs:g} Hz ({Path(ex[fs]).name})" for fs in rates),
                             "preprocess.fs > 0 to resample every recording to one rate")
        w = StoreWriter(cache, "recordings", "builtin" if builtin else "edf", pre, rates[0], standardise=standardise)
        for r in recs:
            w.add_recording(r)
        w.close()
    store = WindowStore(cache)
    if len(store.patients) < min_patients:
        raise InputError("builtin" if builtin else data_path, f"{len(store.patients)} patient(s) found",
                         f"at least {min_patients} (patient-wise folds)")
    progress.log(f"seizure: {len(store.patients)} patients, {len(store.entries)} entries ({store.kind}), "
                 f"{store.n(list(range(len(store.entries))))} windows of {store.window} samples at {store.fs:g} Hz, "
                 f"{int(store.labels(list(range(len(store.entries)))).sum())} seizure windows")
    return cache


def _select(entries: list[PatientWindows], patients: list[str], data_path: Any) -> list[PatientWindows]:
    if not patients:
        return entries
    have = {e.patient for e in entries}
    unknown = sorted(set(patients) - have)
    if unknown:
        raise InputError("config key 'patients'", f"unknown patients {unknown}",
                         "names among " + ", ".join(sorted(have)))
    return [e for e in entries if e.patient in patients]
