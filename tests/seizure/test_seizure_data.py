from pathlib import Path

import numpy as np
import pytest

from detectlab.cli import main
from detectlab.core.errors import InputError
from detectlab.seizure.data import (BIPOLAR, BIPOLAR_NAMES, ELECTRODES, PreprocessConfig, build_montage,
                                    interval_labels, load_chbmit_windows, make_windows, normalise_name,
                                    parse_chbmit_summary, preprocess_recording, read_edf, validate_signal)
from detectlab.seizure.events import detect_intervals, event_metrics

REF_TUH = [f"EEG {e.replace('T7', 'T3').replace('T8', 'T4').replace('P7', 'T5').replace('P8', 'T6')}-REF"
           for e in ELECTRODES] + ["EEG A1-REF", "EEG A2-REF"]


@pytest.mark.parametrize("raw,norm", [("EEG FP1-REF", "FP1"), ("Fp1", "FP1"), ("T3", "T7"), ("EEG T5-LE", "P7"),
                                      ("fp1-f7", "FP1-F7"), ("T8-P8-0", "T8-P8"), ("Cz", "CZ"), ("A1", "A1")])
def test_normalise_name(raw, norm):
    assert normalise_name(raw) == norm


def test_montage_from_referential_tuh_names_equals_differences():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(len(REF_TUH), 50))
    mont, how = build_montage(x, REF_TUH, "r.edf")
    assert how == "referential" and mont.shape == (18, 50)
    idx = {normalise_name(n): i for i, n in enumerate(REF_TUH)}
    for k, (a, b) in enumerate(BIPOLAR):
        np.testing.assert_allclose(mont[k], x[idx[a]] - x[idx[b]], rtol=1e-6)
    assert "A1" in idx  # present in the file but never used: 19 electrodes make the 18 pairs


def test_montage_bipolar_taken_as_is_and_reversed_pair_negated():
    rng = np.random.default_rng(1)
    names = list(BIPOLAR_NAMES)
    names[2] = "P7-T7"  # reversed T7-P7, as CHB-MIT's extra channel
    x = rng.normal(size=(18, 30))
    mont, how = build_montage(x, names, "b.edf")
    assert how == "bipolar"
    np.testing.assert_allclose(mont[0], x[0], rtol=1e-6)
    np.testing.assert_allclose(mont[2], -x[2], rtol=1e-6)


def test_missing_montage_channels_is_input_error():
    names = [n for n in REF_TUH if "O1" not in n]
    with pytest.raises(InputError, match="missing montage channels P7-O1, P3-O1.*O1"):
        build_montage(np.ones((len(names), 10)), names, "x.edf")


def test_window_labels_majority_and_tie():
    x = np.arange(2 * 10, dtype=np.float32).reshape(2, 10)
    y = np.array([0, 0, 1, 1, 1, 1, 1, 0, 0, 0, 1], np.int8)[:10]  # windows of 4: [0011]=tie,[1110]=1, tail dropped
    X, yw = make_windows(x, y, 4)
    assert X.shape == (2, 2, 4)
    np.testing.assert_array_equal(X[1, 0], [4, 5, 6, 7])
    np.testing.assert_array_equal(X[1, 1], [14, 15, 16, 17])
    np.testing.assert_array_equal(yw, [0, 1])


def test_interval_labels():
    y = interval_labels([(0.5, 1.0)], 8, 4.0)  # samples at 0, .25, ..., 1.75 s
    np.testing.assert_array_equal(y, [0, 0, 1, 1, 0, 0, 0, 0])


def test_edf_roundtrip_preprocess_and_labels(tmp_path, write_raw):
    fs = 256.0
    rng = np.random.default_rng(2)
    t = np.arange(int(30 * fs)) / fs
    data = rng.normal(0, 10e-6, (len(REF_TUH), t.size))
    data[:3] += 80e-6 * np.sin(2 * np.pi * 12 * t) * ((t >= 10) & (t < 20))
    p = write_raw(tmp_path / "rec.edf", REF_TUH, data, fs, [(10.0, 20.0)])
    rec = read_edf(p)
    assert rec.fs == fs and rec.seizures == [(10.0, 20.0)] and rec.label_source == "edf annotations"
    assert rec.montage == "referential" and rec.x.shape == (18, t.size)
    pw = preprocess_recording(rec, PreprocessConfig(fs=500.0))
    assert pw.X.shape == (30, 18, 500) and pw.fs == 500.0
    np.testing.assert_array_equal(pw.y, (np.arange(30) >= 10) & (np.arange(30) < 20))
    flat = pw.X.transpose(1, 0, 2).reshape(18, -1)
    np.testing.assert_allclose(flat.mean(1), 0, atol=1e-5)
    np.testing.assert_allclose(flat.std(1), 1, atol=1e-4)


def test_bandpass_removes_out_of_band():
    from detectlab.seizure.data import bandpass_resample

    fs = 256.0
    t = np.arange(int(20 * fs)) / fs
    x = np.stack([np.sin(2 * np.pi * 2 * t), np.sin(2 * np.pi * 15 * t), np.sin(2 * np.pi * 60 * t)])
    y, out_fs = bandpass_resample(x, fs, PreprocessConfig(fs=0))
    mid = slice(int(3 * fs), int(17 * fs))
    rms = np.sqrt((y[:, mid] ** 2).mean(1))
    assert out_fs == fs and rms[1] > 0.6 and rms[0] < 0.02 and rms[2] < 0.02


def test_csv_and_summary_labels(tmp_path, write_raw):
    p = write_raw(tmp_path / "a.edf", BIPOLAR_NAMES, seconds=20.0)
    (tmp_path / "a.csv").write_text("onset,offset\n3.5,8\n")
    assert read_edf(p).seizures == [(3.5, 8.0)]
    q = write_raw(tmp_path / "sub" / "chb09_01.edf", BIPOLAR_NAMES, seconds=20.0)
    (tmp_path / "sub" / "chb09-summary.txt").write_text(
        "File Name: chb09_01.edf\nNumber of Seizures in File: 2\nSeizure 1 Start Time: 2 seconds\n"
        "Seizure 1 End Time: 5 seconds\nSeizure 2 Start Time: 11 seconds\nSeizure 2 End Time: 13 seconds\n")
    rec = read_edf(q)
    assert rec.seizures == [(2.0, 5.0), (11.0, 13.0)] and rec.label_source == "chb09-summary.txt"


def test_parse_real_chbmit_summary(real_data):
    table = parse_chbmit_summary(real_data / "eeg" / "chbmit_windows" / "chb01" / "chb01-summary.txt")
    assert table["chb01_03.edf"] == [(2996.0, 3036.0)]
    assert table["chb01_01.edf"] == []


def test_real_chbmit_windows(real_data):
    pats = load_chbmit_windows(real_data / "eeg" / "chbmit_windows", PreprocessConfig(fs=0))
    assert [p.patient for p in pats] == ["chb01", "chb02", "chb03"]
    counts = {p.patient: (len(p.y), int(p.y.sum())) for p in pats}
    assert counts == {"chb01": (140, 70), "chb02": (60, 30), "chb03": (140, 70)}  # 10 windows per 10-s file
    assert pats[0].X.shape[1:] == (18, 256) and pats[0].fs == 256.0
    # each record: 10 pre-onset windows then 10 ictal ones
    np.testing.assert_array_equal(pats[0].y[:20], [0] * 10 + [1] * 10)
    assert all(np.isfinite(p.X).all() for p in pats)


def test_detect_intervals_and_event_metrics():
    p = np.array([0.1, 0.9, 0.8, 0.2, 0.1, 0.7, 0.1, 0.1, 0.95, 0.1])
    iv = detect_intervals(p, 0.5)
    assert iv == [(1.0, 3.0, 0.9), (5.0, 6.0, 0.7), (8.0, 9.0, 0.95)]
    assert detect_intervals(p, 0.5, merge_gap_s=1.0) == iv  # both gaps are 2 s
    assert detect_intervals(p, 0.5, merge_gap_s=2.0) == [(1.0, 9.0, 0.95)]
    q = np.array([0.9, 0.1, 0.9, 0.1, 0.1, 0.1, 0.9])
    assert detect_intervals(q, 0.5, merge_gap_s=1.0) == [(0.0, 3.0, 0.9), (6.0, 7.0, 0.9)]
    ev = event_metrics(iv, [(2.0, 4.0), (6.5, 7.5)], duration_s=3600.0)
    assert ev["seizures"] == 2 and ev["detected"] == 1 and ev["latency_s"] == -1.0
    assert ev["false_alarms"] == 2 and ev["fa_per_hour"] == 2.0


# ------------------------------------------------------------------------------- bad input via the CLI
@pytest.fixture(scope="module")
def model_run(tmp_path_factory):
    """A minimal run folder with an (untrained) seizure checkpoint, enough for predict's input checks."""
    from detectlab.core.runs import Run
    from detectlab.seizure.experiment import Config
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
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and str(path) in err
    return err


def test_cli_missing_montage_channels(tmp_path, write_raw, capsys, model_run):
    p = write_raw(tmp_path / "m.edf", [n for n in REF_TUH if "CZ" not in n.upper()])
    assert "missing montage channels" in _cli_error(capsys, model_run, p)


def test_cli_flat_channel(tmp_path, write_raw, capsys, model_run):
    data = np.random.default_rng(0).normal(0, 20e-6, (18, 128 * 20))
    data[5] = 0.0
    p = write_raw(tmp_path / "f.edf", BIPOLAR_NAMES, data)
    assert "channel F3-C3 is flat" in _cli_error(capsys, model_run, p)


def test_nan_channel_is_input_error():
    x = np.ones((18, 10))
    x[:, 3] = np.arange(18)
    x[4, 7] = np.nan
    with pytest.raises(InputError, match="channel FP1-F3 contains NaN"):
        validate_signal(x, BIPOLAR_NAMES, "n.edf")


def test_cli_annotation_outside_recording(tmp_path, write_raw, capsys, model_run):
    p = write_raw(tmp_path / "a.edf", BIPOLAR_NAMES, seconds=20.0)
    (tmp_path / "a.csv").write_text("onset,offset\n15,40\n")
    assert "outside the recording" in _cli_error(capsys, model_run, p)


def test_cli_unknown_sampling_rate_and_corrupt_header(tmp_path, write_raw, capsys, model_run):
    p = write_raw(tmp_path / "s.edf", BIPOLAR_NAMES, seconds=10.0)
    b = bytearray(p.read_bytes())
    b[244:252] = b"0       "  # data-record duration 0 s: MNE would silently assume 1 s
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
