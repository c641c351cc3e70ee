"""The detectlab command line: one sub-command group per system, plus `demo` and `bench`.

Thin by design: it parses, builds a config, and calls the system's ``experiment.run``,
``train.run``, ``evaluate.run`` or ``predict.run``. Bad input exits 2 with one line on stderr.

Each system package ``detectlab.<system>`` provides:
  config.Config (a dataclass deriving core.config.BaseConfig), config.DATA_SUBDIR (and optionally
  config.GRID_FIELDS), experiment.run(cfg, run) -> metrics dict, train.run(cfg, run) -> dict,
  evaluate.run(model_run, data, out, args) -> int, predict.run(model_run, inputs, out, args) -> int,
  optionally evaluate.add_arguments(parser) / predict.add_arguments(parser), and a package-level
  register_cli(subparsers) for extra commands.
"""

from __future__ import annotations

import argparse
import importlib
import os
import runpy
import sys
import time
from pathlib import Path
from typing import Any

from detectlab import DESCRIPTIONS, SYSTEMS, __version__, config_module
from detectlab.core.errors import InputError


def available_systems() -> list[str]:
    """Systems whose package has its experiment and predict modules."""
    pkg = Path(__file__).resolve().parent
    return [s for s in SYSTEMS if (pkg / s / "experiment.py").exists() and (pkg / s / "predict.py").exists()]


def _common_run_args(p: argparse.ArgumentParser, default_out: str) -> None:
    p.add_argument("--preset", default="smoke", help="preset name (smoke, paper, ...) or a .toml file [smoke]")
    p.add_argument("--data", default=None,
                   help="data path, 'builtin' for generated data, or 'auto' (DETECTLAB_DATA when present)")
    p.add_argument("--out", default=None, help=f"run folder; a rerun with the same folder resumes [{default_out}]")
    p.add_argument("--seed", type=int, default=None, help="random seed")
    p.add_argument("--device", default=None, help="auto, cpu or cuda")
    p.add_argument("--workers", type=int, default=None, help="units of work run in parallel processes")
    p.add_argument("--ray-address", default=None, help="run units on a Ray cluster ('local' starts one here)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.epochs=3")


def build_config(system: str, args: argparse.Namespace) -> Any:
    from detectlab.core.config import load_config

    exp = config_module(system)
    ov = list(args.overrides or [])
    for flag, key in (("data", "data"), ("seed", "seed"), ("device", "device"), ("workers", "workers"),
                      ("ray_address", "ray_address")):
        val = getattr(args, flag, None)
        if val is not None:
            ov.append(f"{key}={val!r}" if isinstance(val, str) else f"{key}={val}")
    return load_config(exp.Config, system, args.preset, ov)


def resolved_data(system: str, cfg: Any) -> Path | None:
    """The data path a config's ``data`` setting resolves to (None: built-in data)."""
    from detectlab.core.config import resolve_data

    return resolve_data(cfg.data, getattr(config_module(system), "DATA_SUBDIR", system))


def cmd_run(system: str, args: argparse.Namespace, which: str) -> int:
    from detectlab.core.runs import Run
    from detectlab.core.runtime import set_threads

    set_threads()
    cfg = build_config(system, args)
    out = Path(args.out or f"runs/{system}-{which}-{cfg.preset}")
    mod = importlib.import_module(f"detectlab.{system}.{'experiment' if which == 'run' else 'train'}")
    with Run(out, cfg, system, data=resolved_data(system, cfg)) as run:
        t0 = time.perf_counter()
        mod.run(cfg, run)
        run.log(f"{system} {which} finished in {time.perf_counter() - t0:.1f} s; results in {out}")
    print(out)
    return 0


def cmd_predict(system: str, args: argparse.Namespace) -> int:
    from detectlab.core.runtime import set_threads

    set_threads()
    mod = importlib.import_module(f"detectlab.{system}.predict")
    return int(mod.run(Path(args.model_run), [Path(p) for p in args.inputs],
                       Path(args.out) if args.out else None, args) or 0)


def cmd_evaluate(system: str, args: argparse.Namespace) -> int:
    from detectlab.core.runtime import set_threads

    set_threads()
    mod = importlib.import_module(f"detectlab.{system}.evaluate")
    model_run, data = Path(args.model_run), Path(args.data)
    if not data.exists():
        raise InputError(data, "data path does not exist", f"labelled {system} data in one of its usual formats")
    out = Path(args.out) if args.out else Path(f"runs/{system}-evaluate-{model_run.resolve().name}-{data.resolve().name}")
    rc = int(mod.run(model_run, data, out, args) or 0)
    if rc == 0:
        print(out)
    return rc


def cmd_bench(args: argparse.Namespace) -> int:
    root = Path(__file__).resolve().parents[2]
    path = root / "benchmarks" / f"bench_{args.system}.py"
    if not path.exists():
        raise InputError(path, "benchmark not found", "a source checkout with benchmarks/ (pip install -e .)")
    from detectlab.core.runtime import set_threads

    set_threads()
    sys.argv = [str(path), "--size", args.size] + list(args.rest or [])
    runpy.run_path(str(path), run_name="__main__")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from detectlab.demo import run_demo

    systems = args.systems.split(",") if args.systems else available_systems()
    return run_demo(Path(args.out), systems)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="detectlab",
        description="Five published detection systems: train, reproduce the paper's protocol, predict.",
    )
    ap.add_argument("--version", action="version", version=f"detectlab {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="run every system's smoke preset on built-in data and write report.md")
    d.add_argument("--out", default="runs/demo", help="demo folder [runs/demo]")
    d.add_argument("--systems", default="", help="comma-separated subset of systems")
    d.set_defaults(func=cmd_demo)

    b = sub.add_parser("bench", help="run a system's benchmark against its peer library")
    b.add_argument("system", choices=SYSTEMS)
    b.add_argument("--size", default="smoke", choices=["smoke", "full"], help="benchmark size [smoke]")
    b.add_argument("rest", nargs=argparse.REMAINDER, help="extra arguments for the benchmark")
    b.set_defaults(func=cmd_bench)

    for system in available_systems():
        g = sub.add_parser(system, help=DESCRIPTIONS[system], description=DESCRIPTIONS[system])
        gs = g.add_subparsers(dest="action", required=True)
        r = gs.add_parser("run", help="run the paper's protocol and write a run folder")
        _common_run_args(r, f"runs/{system}-run-<preset>")
        r.set_defaults(func=lambda a, s=system: cmd_run(s, a, "run"))
        t = gs.add_parser("train", help="train one model and write a run folder usable by predict")
        _common_run_args(t, f"runs/{system}-train-<preset>")
        t.set_defaults(func=lambda a, s=system: cmd_run(s, a, "train"))
        if (Path(__file__).resolve().parent / system / "evaluate.py").exists():
            e = gs.add_parser("evaluate", help="measure a trained run's model on a labelled data set (another site's data)")
            e.add_argument("model_run", help="run folder written by `train` or `run`")
            e.add_argument("data", help="labelled data in the system's usual format")
            e.add_argument("--out", default=None, help="folder for metrics.json, tables and figures "
                                                       "[runs/<system>-evaluate-<run>-<data>]")
            e.add_argument("--device", default="auto", help="auto, cpu or cuda [auto]")
            ev = importlib.import_module(f"detectlab.{system}.evaluate")
            if hasattr(ev, "add_arguments"):
                ev.add_arguments(e)
            e.set_defaults(func=lambda a, s=system: cmd_evaluate(s, a))
        p = gs.add_parser("predict", help="apply a trained run folder to new files")
        p.add_argument("model_run", help="run folder written by `train` or `run`")
        p.add_argument("inputs", nargs="+", help="input files")
        p.add_argument("--out", default=None, help="folder for outputs")
        pred = importlib.import_module(f"detectlab.{system}.predict")
        if hasattr(pred, "add_arguments"):
            pred.add_arguments(p)
        p.set_defaults(func=lambda a, s=system: cmd_predict(s, a))
        pkg = importlib.import_module(f"detectlab.{system}")
        if hasattr(pkg, "register_cli"):
            pkg.register_cli(gs)
    return ap


def main(argv: list[str] | None = None) -> int:
    from detectlab.core.units import UnitError

    os.environ.setdefault("PYTHONWARNINGS", "ignore::FutureWarning")
    try:
        args = build_parser().parse_args(argv)
        return int(args.func(args) or 0)
    except InputError as e:
        print(f"detectlab: error: {e.line()}", file=sys.stderr)
        return 2
    except UnitError as e:
        print(f"detectlab: error: {e}; details in the run folder's log.txt; rerun with the same --out "
              "to retry the failed units", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("detectlab: interrupted; finished units are kept, rerun with the same --out to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
