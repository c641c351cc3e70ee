"""`detectlab fluid predict RUN scan.png|volume.mhd ...`: the fluid probability of every B-scan.

RUN is a `fluid train` folder (checkpoints/model.safetensors) or a `fluid run` folder (one fold-0
checkpoint per design x arch x batch; `--checkpoint NAME` picks one, default: the best validation accuracy).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", default="",
                   help="checkpoint name in RUN/checkpoints (default: model, else the best validation accuracy)")
    p.add_argument("--threshold", type=float, default=0.5, help="probability at or above which a B-scan is 'fluid'")


def pick_checkpoint(folder: Path, name: str = "") -> Path:
    from detectlab.core.checkpoints import read_header
    from detectlab.core.errors import InputError

    ck = folder / "checkpoints"
    if name:
        p = ck / (name if name.endswith(".safetensors") else f"{name}.safetensors")
        if not p.exists():
            avail = ", ".join(sorted(q.stem for q in ck.glob("*.safetensors"))) or "none"
            raise InputError(p, "no such checkpoint in the run", f"one of: {avail}")
        return p
    if (ck / "model.safetensors").exists():
        return ck / "model.safetensors"
    cands = sorted(ck.glob("*.safetensors"))
    if not cands:
        raise InputError(folder, "run folder has no checkpoints", "a finished `fluid train` or `fluid run` folder")
    return max(cands, key=lambda p: read_header(p).get("val_accuracy") or 0.0)


def load_inputs(inputs: list[Path]) -> tuple[list, list[str]]:
    """Every B-scan of the inputs: 2-D images, or each slice of a MetaImage volume."""
    from detectlab.core.errors import InputError
    from detectlab.fluid.data import IMAGE_EXT, read_image, read_mhd, to_uint8

    images, names = [], []
    for p in inputs:
        if p.suffix.lower() == ".mhd":
            vol = to_uint8(read_mhd(p))
            vol = vol[None] if vol.ndim == 2 else vol
            images += list(vol)
            names += [f"{p}[{i}]" for i in range(len(vol))]
        elif p.suffix.lower() in IMAGE_EXT:
            images.append(read_image(p))
            names.append(str(p))
        else:
            raise InputError(p, f"unsupported file type '{p.suffix}'", "a B-scan image (.png/.jpg/.tif) or a .mhd volume")
    return images, names


def run(model_run: Path, inputs: list[Path], out: Path | None, args: argparse.Namespace) -> int:
    import torch

    from detectlab.core.runs import open_run, write_json
    from detectlab.fluid.data import to_tensor
    from detectlab.fluid.train import load_model

    folder, _ = open_run(model_run)
    ck = pick_checkpoint(folder, getattr(args, "checkpoint", "") or "")
    model, mc = load_model(ck)
    images, names = load_inputs(inputs)
    x = to_tensor(images, int(mc["input_size"]), int(mc.get("resize", 0)), bool(mc.get("denoise", False)))
    with torch.no_grad():
        prob = torch.cat([torch.softmax(model(x[i:i + 32]), 1)[:, 1] for i in range(0, len(x), 32)]).tolist()
    thr = float(getattr(args, "threshold", 0.5))
    print(f"# model {ck.name} ({mc['arch']}, input {mc['input_size']} px)")
    print(f"{'b-scan':<48} {'p_fluid':>8} {'label':>9}")
    rows = []
    for n, p in zip(names, prob):
        lab = "fluid" if p >= thr else "no_fluid"
        print(f"{n:<48} {p:>8.4f} {lab:>9}")
        rows.append({"bscan": n, "p_fluid": p, "label": lab})
    if out is not None:
        write_json(Path(out) / "predictions.json", {"checkpoint": str(ck), "threshold": thr, "predictions": rows})
    return 0
