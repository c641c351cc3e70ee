"""Readers, labels, patient grouping, EDF+D, preprocessing and the window store of the seizure system."""

import json
from pathlib import Path

import numpy as np
import pytest

from detectlab.cli import main
from detectlab.core.errors import InputError
from detectlab.seizure.config import PreprocessConfig
from detectlab.seizure.data import (BIPOLAR, BIPOLAR_NAMES, ELECTRODES, ArrayRecording, build_montage, fft_filter,
                                    find_labels, interval_labels, is_seizure_text, list_recordings, load_chbmit_windows,
                                    make_windows, normalise_name, open_edf, parse_chbmit_summary, preprocess_recording,
                                    read_edf, recording_windows, seizures_from_events, validate_signal, window_labels)

def error_line(err: str) -> str:
    """The CLI's one error line (progress logs also go to stderr); no traceback anywhere."""
    lines = [ln for ln in err.splitlines() if ln.startswith("detectlab: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


REF_TUH = [f"EEG {e.replace('T7', 'T3').replace('T8', 'T4').replace('P7', 'T5').replace('P8', 'T6')}-REF"
           for e in ELECTRODES] + ["EEG A1-REF", "EEG A2-REF"]


@pytest.mark.parametrize("raw,norm", [("EEG FP1-REF", "FP1"), ("Fp1", "FP1"), ("T3", "T7"), ("EEG T5-LE", "P7"),
                                      ("fp1-f7", "FP1-F7"), ("T8-P8-0", "T8-P8"), ("Cz", "CZ"), ("A1", "A1")])
def test_normalise_name(raw, norm):
    """Catches channel-name spellings (TUH referential, old 10-20 names, MNE duplicates) not mapped."""
    assert normalise_name(raw) == norm


def test_montage_from_referential_tuh_names_equals_differences():
    """Catches a wrong electrode pair or sign in the double banana built from referential channels."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(len(REF_TUH), 50))
    mont, how = build_montage(x, REF_TUH, "r.edf")
    assert how == "referential" and mont.shape == (18, 50)
    idx = {normalise_name(n): i for i, n in enumerate(REF_TUH)}
    for k, (a, b) in enumerate(BIPOLAR):
        np.testing.assert_allclose(mont[k], x[idx[a]] - x[idx[b]], rtol=1e-6)


def test_montage_bipolar_taken_as_is_and_reversed_pair_negated():
    """Catches a reversed bipolar channel (CHB-MIT's P7-T7) taken without negation."""
    rng = np.random.default_rng(1)
    names = list(BIPOLAR_NAMES)
    names[2] = "P7-T7"
    x = rng.normal(size=(18, 30))
    mont, how = build_montage(x, names, "b.edf")
    assert how == "bipolar"
    np.testing.assert_allclose(mont[0], x[0], rtol=1e-6)
    np.testing.assert_allclose(mont[2], -x[2], rtol=1e-6)


def test_missing_montage_channels_is_input_error():
    """Catches a recording without the montage's electrodes being read with rows missing."""
    names = [n for n in REF_TUH if "O1" not in n]
    with pytest.raises(InputError, match="missing montage channels P7-O1, P3-O1.*O1"):
        build_montage(np.ones((len(names), 10)), names, "x.edf")


def test_window_labels_majority_and_tie():
    """Catches a tie (half the samples ictal) labelled seizure, or windows misaligned with samples."""
    x = np.arange(2 * 10, dtype=np.float32).reshape(2, 10)
    y = np.array([0, 0, 1, 1, 1, 1, 1, 0, 0, 0], np.int8)
    X, yw = make_windows(x, y, 4)
    np.testing.assert_array_equal(X[1, 0], [4, 5, 6, 7])
    np.testing.assert_array_equal(yw, [0, 1])
    np.testing.assert_array_equal(window_labels([(0.5, 1.75)], 2, 4, 4.0), [0, 1])  # the same from the interval


@pytest.mark.parametrize("sz", [[(2.3, 7.6), (10.0, 10.5)], [(0.0, 3.5)], [(4.25, 4.75), (4.9, 6.0)], []])
def test_window_labels_equal_sample_majority(sz):
    """Catches the interval-based window labeller disagreeing with the per-sample majority rule."""
    fs, win = 100.0, 100
    y = interval_labels(sz, 15 * win, fs)
    _, ref = make_windows(np.zeros((1, 15 * win)), y, win)
    np.testing.assert_array_equal(window_labels(sz, 15, win, fs), ref)


def test_interval_labels():
    """Catches off-by-one sample labels at the onset and offset of a seizure."""
    np.testing.assert_array_equal(interval_labels([(0.5, 1.0)], 8, 4.0), [0, 0, 1, 1, 0, 0, 0, 0])


# ------------------------------------------------------------------------------------ filter (speed item)
def test_fft_filter_equals_mne_filter_data():
    """Catches the single-FFT band-pass drifting from MNE's FIR (taps, zero phase, reflect_limited padding)."""
    import mne

    rng = np.random.default_rng(0)
    for fs in (500.0, 256.0, 64.0):
        x = rng.normal(0, 1, (3, int(20 * fs)))
        ref = mne.filter.filter_data(x, fs, 8.0, 30.0, method="fir", verbose="error")
        y = fft_filter(x, fs, fs, 8.0, 30.0)
        assert y.shape == ref.shape
        assert np.abs(y - ref).max() < 1e-5 * np.abs(ref).max()  # edges included


def test_fft_resample_filter_equals_fft_resample_then_mne():
    """Catches a wrong scale, offset or truncation when resampling and band-passing in one step."""
    import mne
    from scipy.signal import resample

    x = np.random.default_rng(1).normal(0, 1, (2, 256 * 20))
    ref = mne.filter.filter_data(resample(x, 500 * 20, axis=1), 500.0, 8.0, 30.0, method="fir", verbose="error")
    y = fft_filter(x, 256.0, 500.0, 8.0, 30.0)
    mid = slice(1000, -1000)
    assert y.shape == ref.shape
    assert np.sqrt(((y - ref)[:, mid] ** 2).mean() / (ref[:, mid] ** 2).mean()) < 1e-4


def test_bandpass_keeps_band_and_removes_out_of_band():
    """Catches a filter whose band edges are wrong (2 and 60 Hz must go, 15 Hz must stay)."""
    fs = 256.0
    t = np.arange(int(20 * fs)) / fs
    x = np.stack([np.sin(2 * np.pi * 2 * t), np.sin(2 * np.pi * 15 * t), np.sin(2 * np.pi * 60 * t)])
    y = fft_filter(x, fs, fs, 8.0, 30.0)
    rms = np.sqrt((y[:, int(3 * fs): int(17 * fs)] ** 2).mean(1))
    assert rms[1] > 0.69 and rms[0] < 0.01 and rms[2] < 0.01


@pytest.mark.parametrize("fs_in,fs_out,mode", [(500.0, 500.0, "robust"), (256.0, 500.0, "zscore"),
                                               (128.0, 128.0, "moving")])
def test_chunked_preprocessing_equals_whole(fs_in, fs_out, mode):
    """Catches chunk seams (margins, resampling offsets, statistics across chunks) in long recordings."""
    x = np.random.default_rng(2).normal(0, 20e-6, (18, int(400 * fs_in))).astype(np.float32)
    rec = ArrayRecording("p", "s", x, fs_in, [])
    whole = np.concatenate([w for _, w in recording_windows(rec, PreprocessConfig(fs=fs_out, standardise=mode,
                                                                                   chunk_s=10_000))])
    parts = list(recording_windows(rec, PreprocessConfig(fs=fs_out, standardise=mode, chunk_s=60), keep_mb=0))
    assert [k for k, _ in parts] == [0, 60, 120, 180, 240, 300, 360]
    chunked = np.concatenate([w for _, w in parts])
    assert chunked.shape == whole.shape == (400, 18, int(fs_out))
    assert np.abs(chunked - whole).max() < 1e-3 * np.abs(whole).max()


def test_robust_standardisation_does_not_depend_on_seizure_burden():
    """Catches per-recording z-scoring returning (the background shrinks when a long seizure is present):
    a 325-s recording with a 54-s seizure at 3x the background amplitude keeps background SD 1."""
    fs = 128.0
    rng = np.random.default_rng(3)
    x = rng.normal(0, 20e-6, (18, int(325 * fs))).astype(np.float32)
    x[:, int(100 * fs): int(154 * fs)] *= 3.0
    rec = ArrayRecording("p", "s", x, fs, [(100.0, 154.0)])
    bg = np.r_[0:95, 160:320]
    sd = {m: np.concatenate([w for _, w in recording_windows(rec, PreprocessConfig(fs=fs, standardise=m))])[bg].std()
          for m in ("robust", "zscore")}
    assert abs(sd["robust"] - 1.0) < 0.05
    assert sd["zscore"] < 0.85  # the paper's per-recording z-score: background shrinks with the seizure


def test_flat_channel_is_input_error_in_every_mode():
    """Catches a flat channel passing when the recording streams (moving) or is read in chunks."""
    x = np.random.default_rng(4).normal(0, 20e-6, (18, 128 * 200)).astype(np.float32)
    x[5] = 0.0
    for mode in ("robust", "moving"):
        with pytest.raises(InputError, match="channel F3-C3 is flat"):
            list(recording_windows(ArrayRecording("p", "f.edf", x, 128.0), PreprocessConfig(fs=128, standardise=mode,
                                                                                            chunk_s=60)))


# --------------------------------------------------------------------------------- labels (fault 3)
@pytest.mark.parametrize("text,is_sz", [("seizure", True), ("Sz onset", True), ("cpsz", True), ("FNSZ", True),
                                        ("seiz", True), ("ictal activity", True), ("Seizure-free period", False),
                                        ("seizure free", False), ("no seizure", False), ("preictal", False),
                                        ("interictal spikes", False), ("bckg", False), ("nesz", False),
                                        ("eyes closed", False), ("non-seizure", False)])
def test_seizure_text(text, is_sz):
    """Catches 'seizure-free period' read as a seizure and TUH codes (fnsz, cpsz, ...) not recognised."""
    assert is_seizure_text(text) is is_sz


def test_zero_duration_onset_offset_markers_are_paired():
    """Catches zero-duration 'Sz onset'/'Sz offset' markers being dropped (the seizure lost)."""
    ev = [(5.0, 0.0, "Sz onset"), (9.0, 0.0, "Sz offset"), (20.0, 5.0, "seizure-free period"),
          (30.0, 4.0, "seizure"), (40.0, 0.0, "seizure start"), (47.5, 0.0, "seizure end")]
    assert seizures_from_events(ev, "x.edf") == [(5.0, 9.0), (30.0, 34.0), (40.0, 47.5)]
    with pytest.raises(InputError, match="onset marker at 5 s has no offset"):
        seizures_from_events([(5.0, 0.0, "Sz onset")], "x.edf")
    with pytest.raises(InputError, match="no onset marker"):
        seizures_from_events([(5.0, 0.0, "Sz end")], "x.edf")


def test_edf_plus_markers_and_seizure_free_annotation_read_from_file(tmp_path, edf_plus):
    """Catches the EDF+ TAL reader losing zero-duration markers or reading 'seizure-free' as a seizure."""
    p = edf_plus(tmp_path / "a.edf", annotations=[(5.0, 0, "Sz onset"), (9.0, 0, "Sz offset"),
                                                  (20.0, 5.0, "seizure-free period")])
    (rec,) = open_edf(p)
    assert rec.seizures == [(5.0, 9.0)] and rec.label_source == "edf annotations"
    q = edf_plus(tmp_path / "b.edf", annotations=[(20.0, 5.0, "seizure-free period")])
    (rec,) = open_edf(q, require_labels=True)
    assert rec.seizures == [] and rec.label_source == "edf annotations (no seizure)"


def test_tuh_bids_seizeit_label_files(tmp_path, edf_plus):
    """Catches TUH csv_bi/csv/tse, BIDS events.tsv and SeizeIT tsv labels not read (a seizure recording
    trained as seizure-free)."""
    cases = {
        "aaaaaajy_s001_t000.csv_bi": "# version = csv_v1.0.0\n# duration = 30.00 secs\n#\n"
                                     "channel,start_time,stop_time,label,confidence\nTERM,0.0,4.0,bckg,1.0\n"
                                     "TERM,4.0,11.5,seiz,1.0\nTERM,11.5,30.0,bckg,1.0\n",
        "aaaaaajz_s001_t000.csv": "# version = csv_v1.0.0\nchannel,start_time,stop_time,label,confidence\n"
                                  "FP1-F7,4.0,9.0,cpsz,1.0\nF7-T3,6.0,11.5,cpsz,1.0\nC3-P3,20,25,bckg,1.0\n",
        "aaaaaaka_s001_t000.tse": "version = tse_v1.0.0\n\n0.0000 4.0000 bckg 1.0\n4.0000 11.5000 fnsz 1.0\n"
                                  "11.5 30.0 bckg 1.0\n",
        "sub-01_ses-01_task-szMonitoring_run-00_events.tsv": "onset\tduration\teventType\tconfidence\n"
                                                            "4.0\t7.5\tsz_foc_ia\tn/a\n20\t3\tbckg\tn/a\n",
        "P_ID10_r1_a2.tsv": "#\n#\n4\t11.5\tFIA\t\n",
    }
    for name, text in cases.items():
        stem = name.replace("_events.tsv", "_eeg").replace("_a2.tsv", "").rsplit(".", 1)[0]
        p = edf_plus(tmp_path / f"{stem}.edf")
        (tmp_path / name).write_text(text)
        (rec,) = open_edf(p, require_labels=True)
        assert rec.seizures == [(4.0, 11.5)], (name, rec.seizures)


def test_unreadable_labels_exit_2_through_the_cli(tmp_path, edf_plus, capsys):
    """Catches a recording whose labels cannot be read being logged and trained on as seizure-free."""
    for k in (1, 2):
        edf_plus(tmp_path / f"rec{k}.edf", seed=k)  # no annotations, no label file
    (tmp_path / "rec1.csv").write_text("onset,offset\n")  # rec1 explicitly seizure-free; rec2 has no labels
    rc = main(["seizure", "run", "--data", str(tmp_path), "--out", str(tmp_path / "r"), "seeds=1"])
    err = error_line(capsys.readouterr().err)
    assert rc == 2 and "rec2.edf" in err and "no seizure labels found" in err


def test_csv_and_summary_labels(tmp_path, write_raw):
    """Catches the side-file label sources (onset,offset CSV; CHB-MIT summary) not being found."""
    p = write_raw(tmp_path / "a.edf", BIPOLAR_NAMES, seconds=20.0)
    (tmp_path / "a.csv").write_text("onset,offset\n3.5,8\n")
    assert read_edf(p).seizures == [(3.5, 8.0)]
    q = write_raw(tmp_path / "sub" / "chb09_01.edf", BIPOLAR_NAMES, seconds=20.0)
    (tmp_path / "sub" / "chb09-summary.txt").write_text(
        "File Name: chb09_01.edf\nNumber of Seizures in File: 2\nSeizure 1 Start Time: 2 seconds\n"
        "Seizure 1 End Time: 5 seconds\nSeizure 2 Start Time: 11 seconds\nSeizure 2 End Time: 13 seconds\n")
    rec = read_edf(q)
    assert rec.seizures == [(2.0, 5.0), (11.0, 13.0)] and rec.label_source == "chb09-summary.txt"


def test_chbmit_summary_inconsistent_is_input_error(tmp_path):
    """Catches a CHB-MIT summary whose seizure count or start/end pairs do not match being half-read."""
    s = tmp_path / "chb09-summary.txt"
    s.write_text("File Name: chb09_01.edf\nNumber of Seizures in File: 2\nSeizure 1 Start Time: 2 seconds\n"
                 "Seizure 1 End Time: 5 seconds\n")
    with pytest.raises(InputError, match="Number of Seizures in File: 2' but 1 listed"):
        parse_chbmit_summary(s)
    s.write_text("File Name: chb09_01.edf\nSeizure Start Time: 2 seconds\nFile Name: chb09_02.edf\n")
    with pytest.raises(InputError, match="chb09_01.edf: seizure start 2 s has no end"):
        parse_chbmit_summary(s)


def test_find_labels_without_any_source_returns_none(tmp_path):
    """Catches 'no label source' being reported as 'no seizures' (the caller could not refuse it)."""
    assert find_labels(tmp_path / "x.edf", []) == (None, "none")


# -------------------------------------------------------------------------------- patients (fault 2)
def test_files_grouped_into_patients_by_dataset_naming(tmp_path):
    """Catches two files of one person (chb01_03, chb01_04; chb21 = chb01) becoming two patients, so one
    person sits on both sides of leave-one-patient-out."""
    names = ["chb01_03.edf", "chb01_04.edf", "chb21_01.edf", "chb17a_03.edf", "aaaaaajy_s001_t000.edf",
             "aaaaaajy_s002_t001.edf", "PN00-1.edf", "PN00-4.edf", "P_ID10_r1.edf", "P_ID10_r3.edf",
             "sub-01_ses-01_task-szMonitoring_run-00_eeg.edf", "sub-01_ses-01_task-szMonitoring_run-01_eeg.edf",
             "P01.edf", "P02.edf"]
    for n in names:
        (tmp_path / n).write_bytes(b"")
    got = {f.name: p for p, f in list_recordings(tmp_path)}
    assert got == {"chb01_03.edf": "chb01", "chb01_04.edf": "chb01", "chb21_01.edf": "chb01", "chb17a_03.edf": "chb17",
                   "aaaaaajy_s001_t000.edf": "aaaaaajy", "aaaaaajy_s002_t001.edf": "aaaaaajy", "PN00-1.edf": "PN00",
                   "PN00-4.edf": "PN00", "P_ID10_r1.edf": "P_ID10", "P_ID10_r3.edf": "P_ID10",
                   "sub-01_ses-01_task-szMonitoring_run-00_eeg.edf": "sub-01",
                   "sub-01_ses-01_task-szMonitoring_run-01_eeg.edf": "sub-01", "P01.edf": "P01", "P02.edf": "P02"}


def test_patients_csv_and_subfolders_group_files(tmp_path):
    """Catches a patients.csv (or a patient sub-folder) being ignored."""
    for n in ("x1.edf", "x2.edf", "y1.edf", "zed/a.edf", "zed/b.edf"):
        (tmp_path / n).parent.mkdir(exist_ok=True)
        (tmp_path / n).write_bytes(b"")
    (tmp_path / "patients.csv").write_text("file,patient\nx1.edf,alice\nx2.edf,alice\ny1.edf,bob\n")
    got = sorted((p, f.name) for p, f in list_recordings(tmp_path))
    assert got == [("alice", "x1.edf"), ("alice", "x2.edf"), ("bob", "y1.edf"), ("zed", "a.edf"), ("zed", "b.edf")]


# -------------------------------------------------------------------------------------- EDF+D (fault 4)
def test_edf_plus_d_is_split_at_gaps_with_annotations_retimed(tmp_path, edf_plus):
    """Catches an EDF+D file read as continuous: the seizure after the gap would land 90 s too early."""
    onsets = list(range(10)) + list(range(100, 120))
    p = edf_plus(tmp_path / "d.edf", seconds=30, annotations=[(102.0, 3.0, "seizure"), (5.0, 2.0, "seizure")],
                 record_onsets=onsets)
    segs = open_edf(p)
    assert [(s.n_samples / s.fs, s.seizures) for s in segs] == [(10.0, [(5.0, 7.0)]), (20.0, [(2.0, 5.0)])]
    whole = np.random.default_rng(0).normal(0, 20e-6, (18, 30 * 128))
    np.testing.assert_allclose(segs[1].read(0, 128), whole[:, 1280:1408], atol=2e-7)  # data after the gap
    with pytest.raises(InputError, match="EDF\\+D file with 2 continuous segments"):
        read_edf(p)


def test_edf_plus_d_segments_are_separate_store_entries(tmp_path, edf_plus):
    """Catches the two sides of an EDF+D gap being joined into one sequence in the window store."""
    from detectlab.core.config import from_dict
    from detectlab.seizure.config import Config
    from detectlab.seizure.data import WindowStore, prepare_data

    onsets = list(range(10)) + list(range(100, 120))
    edf_plus(tmp_path / "d" / "chb05_01.edf", seconds=30, annotations=[(102.0, 3.0, "seizure")], record_onsets=onsets)
    edf_plus(tmp_path / "d" / "chb06_01.edf", seconds=30, annotations=[(12.0, 3.0, "seizure")], seed=1)
    st = WindowStore(prepare_data(from_dict(Config, {"preprocess": {"fs": 128.0}}), tmp_path / "w", tmp_path / "d"))
    assert [(e["patient"], e["n"], e["seizures"]) for e in st.entries] == [
        ("chb05", 10, []), ("chb05", 20, [[2.0, 5.0]]), ("chb06", 30, [[12.0, 15.0]])]


# ---------------------------------------------------------------------------------- mixed rates (fault 5)
def test_native_rate_with_mixed_rates_is_one_line_error(tmp_path, write_raw, capsys):
    """Catches a bare ValueError (concatenating windows of 128 and 256 samples) with preprocess.fs=0."""
    write_raw(tmp_path / "a.edf", BIPOLAR_NAMES, fs=128.0, seconds=20.0)
    write_raw(tmp_path / "b.edf", BIPOLAR_NAMES, fs=256.0, seconds=20.0)
    for f in ("a", "b"):
        (tmp_path / f"{f}.csv").write_text("onset,offset\n2,6\n")
    rc = main(["seizure", "run", "--data", str(tmp_path), "--out", str(tmp_path / "r"), "preprocess.fs=0"])
    err = error_line(capsys.readouterr().err)
    assert rc == 2 and "preprocess.fs" in err and "128 Hz" in err and "256 Hz" in err


# ---------------------------------------------------------------------------------------- EDF round trip
def test_edf_roundtrip_preprocess_and_labels(tmp_path, write_raw):
    """Catches misread annotations, montage or rate in the EDF path (256 Hz referential -> 500 Hz windows)."""
    fs = 256.0
    rng = np.random.default_rng(2)
    t = np.arange(int(30 * fs)) / fs
    data = rng.normal(0, 10e-6, (len(REF_TUH), t.size))
    p = write_raw(tmp_path / "rec.edf", REF_TUH, data, fs, [(10.0, 20.0)])
    rec = read_edf(p)
    assert rec.fs == fs and rec.seizures == [(10.0, 20.0)] and rec.label_source == "edf annotations"
    assert rec.montage == "referential" and rec.x.shape == (18, t.size)
    pw = preprocess_recording(rec, PreprocessConfig(fs=500.0))
    assert pw.X.shape == (30, 18, 500) and pw.fs == 500.0
    np.testing.assert_array_equal(pw.y, (np.arange(30) >= 10) & (np.arange(30) < 20))
    sds = pw.X.std(axis=2)  # robust: the median 1-s window SD of every channel is 1
    np.testing.assert_allclose(np.median(sds, axis=0), 1.0, atol=1e-3)


# ------------------------------------------------------------------------------- real windowed datasets
def test_parse_real_chbmit_summary(real_data):
    """Catches the CHB-MIT summary parser losing seizures of the real files."""
    table = parse_chbmit_summary(real_data / "eeg" / "chbmit_windows" / "chb01" / "chb01-summary.txt")
    assert table["chb01_03.edf"] == [(2996.0, 3036.0)]
    assert table["chb01_01.edf"] == []


def test_real_chbmit_windows(real_data):
    """Catches wrong counts, order or label of the real CHB-MIT windows (10 pre-onset, then 10 ictal)."""
    pats = load_chbmit_windows(real_data / "eeg" / "chbmit_windows", PreprocessConfig(fs=0))
    assert [p.patient for p in pats] == ["chb01", "chb02", "chb03"]
    counts = {p.patient: (len(p.y), int(p.y.sum())) for p in pats}
    assert counts == {"chb01": (140, 70), "chb02": (60, 30), "chb03": (140, 70)}
    assert pats[0].X.shape[1:] == (18, 256) and pats[0].fs == 256.0
    np.testing.assert_array_equal(pats[0].y[:20], [0] * 10 + [1] * 10)
    assert 5e-6 < np.median(pats[0].X.std(axis=2)) < 5e-4  # kept in volts (standardised per fold)


def test_real_helsinki_infants_recovered(real_data):
    """Catches the infant of each Helsinki window being mis-recovered (counts per infant from the CSV)."""
    from detectlab.seizure.data import load_helsinki

    pats = load_helsinki(real_data / "eeg" / "helsinki_neonatal_windows", PreprocessConfig(fs=0), "A")
    by = {p.patient: (len(p.y), p.cls) for p in pats}
    assert len(pats) == 62 and sum(n for n, _ in by.values()) == 781
    assert by["infant01"] == (25, 1) and by["infant14"] == (45, 1) and by["infant79"] == (5, 1)
    assert by["infant03"] == (18, 0) and by["infant72"] == (18, 0)
    assert all((p.y == p.cls).all() for p in pats)
    assert pats[0].X.shape[1:] == (18, 64) and pats[0].fs == 64.0


def _fake_helsinki(folder: Path, counts: list[int], n_neg: int = 18) -> None:
    """A Helsinki-format pair (FINAL_mtx HDF5 + annotation CSV) with `counts` events for the 40 listed infants."""
    import h5py

    from detectlab.seizure.data import HELSINKI_FREE_INFANTS, HELSINKI_SEIZURE_INFANTS

    folder.mkdir(parents=True, exist_ok=True)
    rows = 400
    cols = {i: np.zeros(rows, int) for i in range(1, 80)}
    for inf, c in zip(HELSINKI_SEIZURE_INFANTS, counts):
        for k in range(c):
            cols[inf][10 + 5 * k: 12 + 5 * k] = 1
    lines = [",".join(str(i) for i in range(1, 80))] + [",".join(str(cols[i][r]) for i in range(1, 80)) for r in range(rows)]
    (folder / "annotations_2017_A_fixed.csv").write_text("\n".join(lines) + "\n")
    n_pos, n_negw = sum(counts), n_neg * len(HELSINKI_FREE_INFANTS)
    rng = np.random.default_rng(0)
    m = np.zeros(((n_pos + n_negw) * 64, 19))
    m[:, :18] = rng.normal(0, 8e-5, (len(m), 18))
    m[: n_pos * 64, 18] = 1
    with h5py.File(folder / "expert_A_1sec_1chunk_64Hz.hdf5", "w") as f:
        f.create_dataset("FINAL_mtx", data=m)


def test_helsinki_format_written_and_count_mismatch_refused(tmp_path):
    """Catches a Helsinki file whose windows do not match the CSV's event counts being silently mis-assigned."""
    from detectlab.seizure.data import load_helsinki

    _fake_helsinki(tmp_path / "ok", [2] * 40)
    pats = load_helsinki(tmp_path / "ok", PreprocessConfig(fs=0), "A")
    assert [len(p.y) for p in pats[:40]] == [2] * 40 and all(len(p.y) == 18 for p in pats[40:])
    _fake_helsinki(tmp_path / "bad", [2] * 40, n_neg=17)
    with pytest.raises(InputError, match="non-seizure windows"):
        load_helsinki(tmp_path / "bad", PreprocessConfig(fs=0), "A")


# ------------------------------------------------------------------------------- bad input via the CLI
@pytest.fixture(scope="module")
def model_run(tmp_path_factory):
    """A minimal run folder with an (untrained) seizure checkpoint, enough for predict's input checks."""
    from detectlab.core.runs import Run
    from detectlab.seizure.config import Config
    from detectlab.seizure.model import CNNBiLSTM
    from detectlab.seizure.train import save_model

    d = tmp_path_factory.mktemp("model_run")
    with Run(d, Config(), "seizure"):
        pass
    save_model(d / "checkpoints" / "cnn_bilstm_at.safetensors", CNNBiLSTM(), "cnn_bilstm", 0.5, 3, 128.0, 128,
               {"l_freq": 8.0, "h_freq": 30.0, "fs": 128.0, "window_s": 1.0})
    return d


def _cli_error(capsys, model_run, path) -> str:
    rc = main(["seizure", "predict", str(model_run), str(path), "--out", str(Path(path).parent / "o")])
    err = error_line(capsys.readouterr().err)
    assert rc == 2 and str(path) in err
    return err


def test_cli_missing_montage_channels(tmp_path, write_raw, capsys, model_run):
    """Catches a recording without the montage's channels reaching the model (exit 2, one line)."""
    p = write_raw(tmp_path / "m.edf", [n for n in REF_TUH if "CZ" not in n.upper()])
    assert "missing montage channels" in _cli_error(capsys, model_run, p)


def test_cli_flat_channel(tmp_path, write_raw, capsys, model_run):
    """Catches a flat (disconnected) channel being scored."""
    data = np.random.default_rng(0).normal(0, 20e-6, (18, 128 * 20))
    data[5] = 0.0
    p = write_raw(tmp_path / "f.edf", BIPOLAR_NAMES, data)
    assert "channel F3-C3 is flat" in _cli_error(capsys, model_run, p)


def test_nan_channel_is_input_error():
    """Catches NaN samples reaching the filter."""
    x = np.ones((18, 10))
    x[:, 3] = np.arange(18)
    x[4, 7] = np.nan
    with pytest.raises(InputError, match="channel FP1-F3 contains NaN"):
        validate_signal(x, BIPOLAR_NAMES, "n.edf")


def test_cli_annotation_outside_recording(tmp_path, write_raw, capsys, model_run):
    """Catches an annotation beyond the recording's end being clipped silently."""
    p = write_raw(tmp_path / "a.edf", BIPOLAR_NAMES, seconds=20.0)
    (tmp_path / "a.csv").write_text("onset,offset\n15,40\n")
    assert "outside the recording" in _cli_error(capsys, model_run, p)


def test_cli_unknown_sampling_rate_and_corrupt_header(tmp_path, write_raw, capsys, model_run):
    """Catches a zero record duration, a truncated file, a garbage header and a too-low rate being read."""
    p = write_raw(tmp_path / "s.edf", BIPOLAR_NAMES, seconds=10.0)
    b = bytearray(p.read_bytes())
    b[244:252] = b"0       "
    q = tmp_path / "zero_duration.edf"
    q.write_bytes(bytes(b))
    assert "unknown sampling rate" in _cli_error(capsys, model_run, q)
    r = tmp_path / "truncated.edf"
    r.write_bytes(p.read_bytes()[: len(b) // 2])
    assert "truncated" in _cli_error(capsys, model_run, r)
    g = tmp_path / "garbage.edf"
    g.write_bytes(b"not an edf at all" * 30)
    assert "corrupt EDF header" in _cli_error(capsys, model_run, g)
    low = write_raw(tmp_path / "low.edf", BIPOLAR_NAMES, fs=32.0, seconds=10.0)
    assert "too low" in _cli_error(capsys, model_run, low)


def test_store_meta_records_what_was_done(tiny_store):
    """Catches the window store not recording its standardisation and rate (evaluate/predict read them)."""
    meta = json.loads((tiny_store.folder / "meta.json").read_text())
    assert meta["standardise"] == "robust" and meta["fs"] == 128.0 and meta["window_samples"] == 128
    assert [e["patient"] for e in meta["entries"]] == ["P01", "P02", "P03", "P04"]
