"""Natural training and PGD adversarial training (Madry et al.) of the MNIST CNN.

"natural": cross-entropy on clean images. "secret": cross-entropy on PGD examples made against the
model being trained (eps 0.3, 40 steps of 0.01, random start), as the secret model of the MNIST
challenge; it can start from the natural weights (`init_from_natural`) to save time on a CPU.
`detectlab adversarial train` trains both models and fits the detector threshold.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from detectlab.adversarial.attack import pgd, predict_labels
from detectlab.adversarial.baseline import FeatureSqueezing
from detectlab.adversarial.config import MODELS, Config
from detectlab.adversarial.data import Split, load_data
from detectlab.adversarial.detector import SteganalysisDetector, to_uint8
from detectlab.adversarial.model import MadryCNN
from detectlab.core import progress
from detectlab.core.checkpoints import load_into, save_checkpoint
from detectlab.core.runtime import choose_device, seed_everything

SYSTEM = "adversarial"


def train_model(kind: str, train: Split, cfg: Any, device: torch.device, init: Path | None = None,
                log_every: int = 200) -> tuple[MadryCNN, dict[str, Any]]:
    """Train a 'natural' or 'secret' (adversarially trained) model; returns (model, history)."""
    tc = cfg.train if kind == "natural" else cfg.adv_train
    g = seed_everything(cfg.seed + (0 if kind == "natural" else 1))
    model = MadryCNN().to(device)
    if init is not None:
        load_into(model, init, SYSTEM)
    opt = torch.optim.Adam(model.parameters(), lr=tc.lr)
    n = len(train)
    steps_per_epoch = max(1, n // tc.batch_size)
    total = tc.iterations if tc.iterations > 0 else tc.epochs * steps_per_epoch
    hist: dict[str, list[float]] = {"step": [], "loss": [], "acc": []}
    t0 = time.perf_counter()
    step = 0
    x_all, y_all = train.x, train.y
    with progress.make_progress() as bar:
        task = bar.add_task(f"train {kind}", total=total)
        while step < total:
            perm = torch.randperm(n, generator=g)
            for b in range(steps_per_epoch):
                if step >= total:
                    break
                idx = perm[b * tc.batch_size: (b + 1) * tc.batch_size]
                xb, yb = x_all[idx].to(device), y_all[idx].to(device)
                if kind == "secret":
                    # optional linear eps warm-up over the first `eps_warmup` fraction of the iterations
                    ramp = min(1.0, (step + 1) / (tc.eps_warmup * total)) if tc.eps_warmup > 0 else 1.0
                    eps = tc.eps * ramp
                    xb = pgd(model, xb, yb, eps, tc.step_size * ramp, tc.steps, True, len(xb), None)
                model.train()
                logits = model(xb)
                loss = F.cross_entropy(logits, yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
                if step % log_every == 0 or step == total:
                    acc = float((logits.argmax(1) == yb).float().mean())
                    hist["step"].append(step)
                    hist["loss"].append(loss.item())
                    hist["acc"].append(acc)
                    progress.log(f"train {kind}: step {step}/{total} loss {loss.item():.4f} "
                                 f"{'adv ' if kind == 'secret' else ''}batch acc {acc:.3f}")
                bar.advance(task)
    hist["seconds"] = time.perf_counter() - t0
    hist["iterations"] = total
    return model, hist


def train_unit(kind: str, cfg_dict: dict, ckpt: str, init: str | None = None) -> dict[str, Any]:
    """A unit of work: train one model, save its checkpoint, return its clean test accuracy."""
    from detectlab.core.config import from_dict

    cfg = from_dict(Config, cfg_dict)
    device = choose_device(cfg.device)
    train, test = load_data(cfg)
    model, hist = train_model(kind, train, cfg, device, Path(init) if init else None)
    test = test.subset(cfg.attack.n_test, cfg.seed)
    acc = float((predict_labels(model, test.x) == test.y).float().mean())
    tc = cfg.train if kind == "natural" else cfg.adv_train
    save_checkpoint(ckpt, model, SYSTEM, {"arch": "MadryCNN", "n_outputs": 10}, kind=kind,
                    training=asdict(tc), clean_test_accuracy=acc)
    progress.log(f"{kind} model: clean test accuracy {acc:.4f} on {len(test)} images, "
                 f"{hist['seconds']:.0f} s of training")
    return {"clean_accuracy": acc, "train_seconds": hist["seconds"], "iterations": hist["iterations"],
            "history": {k: v for k, v in hist.items() if isinstance(v, list)}}


def _from_previous(cfg: Config, run: Any) -> dict[str, Any]:
    """Reuse the checkpoints of a finished run (`models_from`): copy them in, read their training record."""
    import hashlib
    import json
    import shutil

    from detectlab.core.checkpoints import read_header
    from detectlab.core.errors import InputError

    src = Path(cfg.models_from).expanduser()
    pin_src, pin_here = src / "data.json", run.dir / "data.json"
    if pin_src.exists() and pin_here.exists():
        a = json.loads(pin_src.read_text()).get("data", {})
        b = json.loads(pin_here.read_text()).get("data", {})
        if a and b and (a.get("sha256"), a.get("kind")) != (b.get("sha256"), b.get("kind")):
            raise InputError(src, f"its models were trained on other data ({a.get('resolved')}) than this run "
                                  f"reads ({b.get('resolved')})", "a models_from run made on the same data")
    # every checkpoint of the source, not only cfg.models: `models` is a grid field, and a rerun that drops
    # or adds a model must meet the same pin
    digests = {}
    for m in [m for m in MODELS if (src / "checkpoints" / f"{m}.safetensors").exists()]:
        h = hashlib.sha256()
        with open(src / "checkpoints" / f"{m}.safetensors", "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        digests[m] = h.hexdigest()
    run.pin_data(src / "checkpoints", name="models_from", extra=digests)  # a resume on retrained models is refused
    out = {}
    for m in cfg.models:
        s, d = src / "checkpoints" / f"{m}.safetensors", run.checkpoints / f"{m}.safetensors"
        head = read_header(s)
        if head.get("system") != SYSTEM:
            raise InputError(s, f"checkpoint is for system '{head.get('system')}'", "an adversarial checkpoint")
        if not d.exists():
            shutil.copyfile(s, d)
        out[m] = {"clean_accuracy": head.get("clean_test_accuracy"), "train_seconds": None,
                  "iterations": (head.get("training") or {}).get("iterations"), "training": head.get("training"),
                  "models_from": str(s)}
    return out


def train_both(cfg: Config, run: Any) -> dict[str, Any]:
    """Train the models of `cfg.models` as resumable units (or take them from `models_from`)."""
    from detectlab.core.config import to_dict
    from detectlab.core.units import Unit, run_units

    if cfg.models_from:
        return _from_previous(cfg, run)
    cd = to_dict(cfg)
    nat = str(run.checkpoints / "natural.safetensors")
    sec = str(run.checkpoints / "secret.safetensors")
    res: dict[str, Any] = {}
    if "natural" in cfg.models or ("secret" in cfg.models and cfg.adv_train.init_from_natural):
        res |= run_units(run, [Unit("train-natural", train_unit, dict(kind="natural", cfg_dict=cd, ckpt=nat))],
                         description="train natural")
    if "secret" in cfg.models:
        init = nat if cfg.adv_train.init_from_natural else None
        res |= run_units(run, [Unit("train-secret", train_unit, dict(kind="secret", cfg_dict=cd, ckpt=sec, init=init))],
                         description="train secret")
    return {m: res[f"train-{m}"] for m in cfg.models}


def load_model(path: Path, device: torch.device | str = "cpu") -> MadryCNN:
    model = MadryCNN()
    load_into(model, path, SYSTEM)
    return model.to(device).eval()


def fit_detector(cfg: Config, train: Split) -> SteganalysisDetector:
    """The steganalysis detector with the config's conventions, its threshold from benign training images."""
    d = cfg.detector
    det = SteganalysisDetector(c=d.constant, divisor=d.divisor, rule=d.threshold)
    return det.fit(to_uint8(train.subset(d.threshold_images, cfg.seed).x, "round"))  # 8-bit images


def fit_squeezers(cfg: Config, models: dict[str, MadryCNN], train: Split) -> dict[str, FeatureSqueezing | None]:
    """Feature squeezing per model, its threshold at `squeeze.fpr` of benign training images."""
    s = cfg.squeeze
    fit = train.subset(s.n_fit, cfg.seed + 1)
    out: dict[str, FeatureSqueezing | None] = {}
    for m, model in models.items():
        out[m] = FeatureSqueezing(model, bits=s.bits, median=tuple(s.median), batch_size=cfg.attack.batch_size
                                  ).fit(fit.x, s.fpr) if s.enabled else None
    return out


def squeezer_record(fs: FeatureSqueezing | None) -> dict[str, Any] | None:
    if fs is None:
        return None
    return {"threshold": fs.threshold, "fit_fpr": fs.fit_fpr, "train_fpr": fs.fit_stats["train_fpr"],
            "bits": fs.bits, "median": list(fs.median), "n_fit": fs.fit_stats["n"]}


def run(cfg: Config, run: Any) -> dict[str, Any]:
    """`detectlab adversarial train`: the models + both detectors' thresholds, ready for predict and evaluate."""
    res = train_both(cfg, run)
    train, _ = load_data(cfg)
    det = fit_detector(cfg, train)
    fss = fit_squeezers(cfg, {m: load_model(run.checkpoints / f"{m}.safetensors") for m in res}, train)
    metrics = {"threshold": det.threshold, "threshold_rule": det.rule, "thresholds": det.thresholds,
               "threshold_images": det.n_fit, "detector_fit": det.fit_stats,
               "detector": {"divisor": det.divisor, "constant": det.c, "quantize": cfg.detector.quantize},
               "models": {k: {"clean_accuracy": v["clean_accuracy"], "train_seconds": v["train_seconds"],
                              "feature_squeezing": squeezer_record(fss[k])} for k, v in res.items()}}
    run.write_metrics(metrics)
    return metrics
