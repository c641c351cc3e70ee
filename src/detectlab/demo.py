"""`detectlab demo`: every system's smoke preset on built-in data, then one report.md."""

from __future__ import annotations

import importlib
import time
import traceback
from pathlib import Path

from detectlab import DESCRIPTIONS, config_module
from detectlab.core import progress
from detectlab.core.config import load_config, resolve_data
from detectlab.core.errors import InputError
from detectlab.core.runs import Run
from detectlab.core.runtime import set_threads


def run_system(system: str, out: Path) -> dict:
    conf = config_module(system)
    exp = importlib.import_module(f"detectlab.{system}.experiment")
    cfg = load_config(conf.Config, system, "smoke", {"data": "builtin"})
    t0 = time.perf_counter()
    with Run(out, cfg, system, data=resolve_data(cfg.data, getattr(conf, "DATA_SUBDIR", system))) as run:
        exp.run(cfg, run)
    return {"seconds": time.perf_counter() - t0}


def run_demo(out: Path, systems: list[str]) -> int:
    set_threads()
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    for system in systems:
        progress.log(f"demo: {system} (smoke preset, built-in data)")
        try:
            results[system] = run_system(system, out / system)
            progress.log(f"demo: {system} done in {results[system]['seconds']:.0f} s")
        except InputError as e:
            results[system] = {"error": e.line()}
        except Exception as e:  # noqa: BLE001 - one failing system must not hide the others
            results[system] = {"error": f"{type(e).__name__}: {e}"}
            progress.log(traceback.format_exc())
    report = write_report(out, results)
    progress.log(f"demo: report written to {report}")
    print(report)
    return 1 if any("error" in r for r in results.values()) else 0


def write_report(out: Path, results: dict[str, dict]) -> Path:
    lines = ["# detectlab demo report", "",
             "Every system's smoke preset on built-in data (small, fast; not the paper's numbers).", "",
             "| system | status | time (s) |", "|---|---|---|"]
    for s, r in results.items():
        status = "ok" if "error" not in r else f"FAILED: {r['error']}"
        lines.append(f"| [{s}](#{s}) | {status} | {r.get('seconds', float('nan')):.0f} |")
    for s, r in results.items():
        d = out / s
        lines += ["", f"## {s}", "", DESCRIPTIONS.get(s, ""), "", f"Run folder: `{s}/` "
                  f"(config.toml, metrics.json, tables/, figures/, checkpoints/, log.txt)", ""]
        if "error" in r:
            lines += [f"**Failed:** {r['error']}", ""]
        for t in sorted((d / "tables").glob("*.md")):
            lines += [t.read_text().rstrip(), f"\n([csv]({s}/tables/{t.stem}.csv))", ""]
        for f in sorted((d / "figures").glob("*.png")):
            lines += [f"![{f.stem}]({s}/figures/{f.name})", ""]
    p = out / "report.md"
    p.write_text("\n".join(lines) + "\n")
    return p
