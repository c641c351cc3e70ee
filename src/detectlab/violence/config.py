"""The violence system's configuration (validated when it loads: presets, overrides, from_dict).

Presets in ``detectlab/configs/violence/``: ``smoke`` (built-in clips, the demo), ``real`` (the learning recipe on
the real clips, 3 seeds, baselines, chunk-split column), ``paper`` (the paper's settings as far as it states them).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from detectlab.core.config import BaseConfig, ConfigError, param

DATA_SUBDIR = "video"
SYSTEM = "violence"
STRATEGIES = ("fedavg", "fedper", "perfedavg", "fedmetaper")
STRATEGY_NAMES = {"fedavg": "FedAvg", "fedper": "FedPer", "perfedavg": "Per-FedAvg", "fedmetaper": "FedMeta-Per"}
#: baselines of every table: majority class per client, motion-energy logistic regression (ViF-like; pooled
#: training clips, and each client's own), local-only training, FedAvg + local fine-tuning
BASELINES = ("majority", "motion", "motion_local", "local", "fedavg_ft")
BASELINE_NAMES = {"majority": "majority class (per client)", "motion": "motion-energy LR (pooled)",
                  "motion_local": "motion-energy LR (per client)", "local": "local-only training",
                  "fedavg_ft": "FedAvg + local fine-tuning"}
#: "source": held-out source videos (videos.txt), the protocol; "chunk": random chunk-level split (leaky)
SPLITS = ("source", "chunk")
EXPERIMENTS = ("balanced2", "imbalanced3", "combined4", "dirichlet", "iid")
#: a resume may add or remove values of these (only new units are computed)
GRID_FIELDS = ("experiments", "strategies", "seeds", "splits", "baselines", "chunk_strategies")


@dataclass
class DataConfig:
    size: int = param(64, ge=16, doc="frames scaled to size x size when decoded (a multiple of 4)")
    max_frames: int = param(0, ge=0, doc="frames kept per clip (0 = all)")
    test_fraction: float = param(0.25, gt=0, lt=1, doc="share of the source videos held out")
    val_fraction: float = param(0.2, ge=0, lt=1, doc="share of each client's training chunks (by source) for validation")
    data2: str = ""  # second dataset for combined4 ("" = built-in second dataset when data is built-in)
    # built-in synthetic data
    syn_sites: int = param(2, ge=1)
    syn_sources_per_site: int = param(4, ge=1)
    syn_clips_per_source: int = param(4, ge=2)
    syn_frames: int = param(32, ge=16)
    syn_size: int = param(64, ge=16)

    def validate(self) -> None:
        if self.size % 4:
            raise ConfigError("data_opts.size", self.size, "a multiple of 4, at least 16")


@dataclass
class AugConfig:
    """Training windows and augmentation (evaluation always uses fixed chunks of whole frames)."""

    stride: int = param(16, ge=1, le=16, doc="training windows start every `stride` frames (8 = half overlap)")
    jitter: int = param(0, ge=0, le=15, doc="random shift of each training window, +- frames")
    crop: int = param(0, ge=0, doc="random square crop of training windows, pixels (0 = whole frame); evaluation "
                                   "uses the central crop of this size")
    flip: bool = False  # random left-right mirror of training windows


@dataclass
class ModelConfig:
    width: int = param(8, ge=1)
    hidden: list[int] = param([128, 32], ge=1)
    dropout: float = param(0.2, ge=0, lt=1)
    norm: str = param("none", choices=("none", "group", "group_rgb"),
                      doc="GroupNorm after every convolution (group) or in the RGB branch only (group_rgb)")
    input_norm: str = param("fixed", choices=("fixed", "chunk"), doc="fixed (x-0.45)/0.25, or per-chunk standardisation")
    groups: int = param(4, ge=1)

    def validate(self) -> None:
        if len(self.hidden) != 2:
            raise ConfigError("model.hidden", self.hidden, "two hidden FC sizes, e.g. [128, 32]")


@dataclass
class FLConfig:
    rounds: int = param(10, ge=1)
    epochs: int = param(1, ge=1, doc="local epochs per round (FedAvg, FedPer); meta-steps follow from it")
    batch: int = param(16, ge=1)
    lr: float = param(1e-3, gt=0, doc="Adam, local training")
    weight_decay: float = param(0.0, ge=0)
    keep_optimizer: bool = True  # keep each client's Adam moments across rounds
    alpha: float = param(0.03, gt=0, doc="Per-FedAvg / FedMeta-Per inner (personalisation) step")
    beta: float = param(0.03, gt=0, doc="Per-FedAvg / FedMeta-Per outer step")
    meta_opt: str = param("sgd", choices=("sgd", "adam"), doc="outer update: w - beta u (paper) or Adam(lr=beta) on u")
    delta: float = param(1e-3, gt=0, doc="Hessian-free finite-difference step")
    variant: str = param("fo", choices=("fo", "hf"), doc="Per-FedAvg: first-order or Hessian-free")
    meta_steps: int = param(0, ge=0, doc="per round; 0 = half the batches of `epochs` epochs (2 batches a step)")
    adapt_steps: int = param(1, ge=0, doc="personalisation steps before evaluation (Per-FedAvg, FedMeta-Per)")
    select: str = param("best_val", choices=("best_val", "best_val_bacc", "last"),
                        doc="each client's reported model: best on its validation clips over rounds (best_val: "
                            "chunk AUC, then loss; best_val_bacc: clip balanced accuracy at the 0.5 threshold, then "
                            "AUC, then loss), or the last")
    eval_test_every_round: bool = True  # test metrics per round for the learning-curve figure (never used to choose)
    eval_stride: int = param(16, ge=1, le=16, doc="evaluation chunks start every `eval_stride` frames")
    client_threads: int = param(1, ge=1)
    sim_cpus: int = param(2, ge=1, doc="CPUs Ray may use (one per client at a time)")
    timeout: float = param(3600.0, gt=0)
    # federation (fed): robust aggregation, bounded counts, partial participation, bounded rounds
    aggregation: str = param("fedavg", choices=("fedavg", "median", "trimmed", "krum"),
                             doc="Flower's FedAvg / FedMedian / FedTrimmedAvg / Krum")
    trim_beta: float = param(0.25, ge=0, lt=0.5, doc="trimmed: fraction cut from each tail")
    krum_malicious: int = param(1, ge=0, doc="krum: assumed number of malicious clients")
    clip_norm: float = param(0.0, ge=0, doc="> 0: clip every update to this L2 norm (server-side fixed clipping)")
    max_weight: float = param(0.0, ge=0, doc="> 0: no client weighs more than this x the median claimed num-examples")
    fraction: float = param(1.0, gt=0, le=1, doc="clients sampled per round (partial participation)")
    min_clients: int = param(1, ge=0, doc="usable updates a round needs (0 = every sampled client), else the run stops")
    round_timeout: float = param(600.0, gt=0, doc="seconds to wait for the nodes and replies of a round")
    fault: str = ""  # tests / attack experiments only: "nan:K", "shape:K", "scale:K:S", "count:K:M" (faults.py app)


@dataclass
class BaselineConfig:
    local_epochs: int = param(0, ge=0, doc="local-only training epochs (0 = rounds x epochs, the federation's budget)")
    local_patience: int = param(0, ge=0, doc="stop local-only training after this many epochs without a better "
                                             "validation loss (0 = never)")
    ft_epochs: int = param(3, ge=1, doc="FedAvg + local fine-tuning: epochs on the client's training clips")
    ft_lr: float = param(0.0, ge=0, doc="fine-tuning learning rate (0 = fl.lr / 3)")
    motion_c: float = param(1.0, gt=0, doc="inverse L2 strength of the motion-energy logistic regression")


@dataclass
class Config(BaseConfig):
    experiments: list[str] = param(["balanced2", "imbalanced3"], choices=EXPERIMENTS, nonempty=True)
    strategies: list[str] = param(list(STRATEGIES), choices=STRATEGIES, nonempty=True)
    seeds: list[int] = param([0], ge=0, nonempty=True, doc="split/initialisation seeds (added to --seed)")
    splits: list[str] = param(["source"], choices=SPLITS, nonempty=True)
    chunk_strategies: list[str] = param(["fedper"], choices=STRATEGIES, doc="strategies also run on the chunk split")
    baselines: list[str] = param(list(BASELINES), choices=BASELINES)
    clients: int = param(4, ge=1, doc="clients of dirichlet / iid")
    dirichlet_alpha: float = param(0.5, gt=0)
    train_experiment: str = param("balanced2", choices=EXPERIMENTS, doc="what `detectlab violence train` runs")
    train_strategy: str = param("fedper", choices=STRATEGIES)
    data_opts: DataConfig = field(default_factory=DataConfig)
    aug: AugConfig = field(default_factory=AugConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    fl: FLConfig = field(default_factory=FLConfig)
    baseline: BaselineConfig = field(default_factory=BaselineConfig)

    def validate(self) -> None:
        if self.aug.crop and self.aug.crop > self.data_opts.size:
            raise ConfigError("aug.crop", self.aug.crop, f"0 or at most data_opts.size ({self.data_opts.size})")
        if self.aug.crop and self.aug.crop < 16:
            raise ConfigError("aug.crop", self.aug.crop, "0 or at least 16")
        if len(set(self.seeds)) != len(self.seeds):
            raise ConfigError("seeds", self.seeds, "distinct seeds")


def model_dict(cfg: Config) -> dict:
    """The model's own settings (what a checkpoint needs to be rebuilt), with the frame size it was trained on."""
    m = cfg.model
    return {"arch": "DiffGated", "width": m.width, "hidden": list(m.hidden), "dropout": m.dropout, "norm": m.norm,
            "input_norm": m.input_norm, "groups": m.groups, "size": cfg.data_opts.size, "crop": cfg.aug.crop}


def client_spec(cfg: Config) -> dict:
    """The hyper-parameters every client receives (task.py reads them)."""
    fl, a = cfg.fl, cfg.aug
    return {"lr": fl.lr, "weight_decay": fl.weight_decay, "epochs": fl.epochs, "batch": fl.batch,
            "keep_optimizer": fl.keep_optimizer, "alpha": fl.alpha, "beta": fl.beta, "meta_opt": fl.meta_opt,
            "delta": fl.delta, "variant": fl.variant, "meta_steps": fl.meta_steps, "adapt_steps": fl.adapt_steps,
            "select": fl.select, "eval_stride": fl.eval_stride, "eval_test_every_round": fl.eval_test_every_round,
            "threads": fl.client_threads, "device": cfg.device, "fault": fl.fault,
            "aug": {"stride": a.stride, "jitter": a.jitter, "crop": a.crop, "flip": a.flip}}
