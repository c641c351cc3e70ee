"""The seizure system's configuration: one dataclass per part, every field validated when a config loads.

Imported by everything below the CLI (data, synthetic, baseline, train, experiment, evaluate, predict);
it imports only the core.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from detectlab.core.config import BaseConfig, ConfigError, param

DATA_SUBDIR = "eeg"
#: fields whose change only adds or removes units of a finished run (a resume computes only the new ones)
GRID_FIELDS = ("seeds", "variants", "folds")

VARIANTS = ("cnn", "cnn_at", "cnn_bilstm", "cnn_bilstm_at")
STANDARDISE = ("robust", "moving", "zscore")
SPLITS = ("auto", "lopo", "group_kfold")
EXPERTS = ("A", "B")
DATASETS = ("auto", "chbmit_windows", "helsinki", "edf")


@dataclass
class SyntheticConfig:
    """The built-in cohort: one EDF+ recording per patient (see synthetic.py)."""

    n_patients: int = param(20, ge=2)
    duration_s: float = param(320.0, gt=0)  # mean recording length (paper: 319.5 +- 44.5 s)
    duration_sd: float = param(45.0, ge=0)
    seizure_min_s: float = param(20.0, gt=0)
    seizure_max_s: float = param(80.0, gt=0)
    fs: float = param(500.0, ge=64)
    seed: int = 0  # the data seed (independent of the training seeds)
    shift: float = param(1.0, ge=0)  # strength of the patient-specific differences (0: all patients alike)

    def validate(self) -> None:
        if self.seizure_max_s < self.seizure_min_s:
            raise ConfigError("synthetic.seizure_max_s", self.seizure_max_s, f">= synthetic.seizure_min_s "
                              f"({self.seizure_min_s})")


@dataclass
class PreprocessConfig:
    """Paper III-A: resample, 8-30 Hz band-pass, standardise, non-overlapping 1-s windows.

    ``standardise`` (continuous recordings): ``robust`` = per recording and channel, centre = median of the
    1-s window means, scale = median of the 1-s window SDs (independent of the seizure burden below 50 %);
    ``moving`` = exponential moving statistics over ``moving_s`` seconds (causal, streams); ``zscore`` =
    the paper's per-recording mean and SD (a long seizure shrinks the background). Windowed data sets
    (CHB-MIT windows, Helsinki) always use robust statistics of the training fold's windows.
    """

    l_freq: float = param(8.0, gt=0)
    h_freq: float = param(30.0, gt=0)
    fs: float = param(500.0, ge=0)  # resample to this rate; 0 keeps the native rate (window = fs samples)
    window_s: float = param(1.0, gt=0)
    standardise: str = param("robust", choices=STANDARDISE)
    moving_s: float = param(600.0, gt=0)  # time constant of the moving statistics
    chunk_s: float = param(600.0, ge=10)  # recordings longer than this are read and filtered in chunks

    def validate(self) -> None:
        if self.h_freq <= self.l_freq:
            raise ConfigError("preprocess.h_freq", self.h_freq, f"> preprocess.l_freq ({self.l_freq})")
        if self.fs and self.fs / 2 <= self.h_freq:
            raise ConfigError("preprocess.fs", self.fs, f"0 or a rate above 2 x h_freq ({2 * self.h_freq:g} Hz)")


@dataclass
class Stage1Config:
    lr: float = param(0.005, gt=0)
    batch_size: int = param(32, ge=2)
    epochs: int = param(20, ge=1)
    gamma: float = param(10.0, ge=0)  # lambda schedule steepness (Eq. 8)
    in_memory_mb: float = param(2048.0, ge=0)  # training windows above this size are read per batch


@dataclass
class Stage2Config:
    enabled: bool = True
    lr: float = param(0.001, gt=0)
    batch_size: int = param(2, ge=1)  # sub-sequences per batch (N'_b)
    epochs: int = param(6, ge=1)
    seq_len: int = param(300, ge=0)  # windows per training sub-sequence; 0 = whole recordings (the paper)


@dataclass
class EventConfig:
    """SzCORE event scoring (timescoring) parameters, in seconds."""

    tolerance_start: float = param(30.0, ge=0)
    tolerance_end: float = param(60.0, ge=0)
    min_overlap: float = param(0.0, ge=0, lt=1)
    max_event_duration: float = param(300.0, gt=0)
    min_duration_between_events: float = param(90.0, ge=0)


@dataclass
class SplitConfig:
    """``lopo``: leave one patient out; ``group_kfold``: k folds of whole patients, each test fold holding
    patients of both classes (Helsinki: an infant has one class); ``auto``: group_kfold for Helsinki."""

    kind: str = param("auto", choices=SPLITS)
    k: int = param(5, ge=2)
    seed: int = 0  # fold assignment seed (the same folds for every training seed)


@dataclass
class HelsinkiConfig:
    expert: str = param("A", choices=EXPERTS)


@dataclass
class ProbeConfig:
    """Linear probe of patient identity on frozen stage-1 features of the training patients."""

    enabled: bool = True
    block: int = param(10, ge=1)  # consecutive windows per probe block (blocks alternate train/test)
    c: float = param(1.0, gt=0)  # inverse L2 strength of the logistic regression


@dataclass
class Config(BaseConfig):
    data: str = "builtin"
    #: which data set inside `data` when it is the eeg root holding several: auto = the CHB-MIT windows
    dataset: str = param("auto", choices=DATASETS)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    stage1: Stage1Config = field(default_factory=Stage1Config)
    stage2: Stage2Config = field(default_factory=Stage2Config)
    events: EventConfig = field(default_factory=EventConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    helsinki: HelsinkiConfig = field(default_factory=HelsinkiConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    seeds: int = param(15, ge=1)  # seeds seed, seed+1, ..., seed+seeds-1
    variants: list[str] = param(list(VARIANTS), choices=VARIANTS, nonempty=True)
    patients: list[str] = field(default_factory=list)  # use only these patients (empty: all)
    folds: list[str] = field(default_factory=list)  # held-out patients (lopo) or fold names to run (empty: all)
    fig3_patients: list[str] = field(default_factory=list)  # empty: the best and worst AT gain
    save_checkpoints: bool = True
    train_adversarial: bool = True  # `seizure train`: AT on (the proposed model) or off
