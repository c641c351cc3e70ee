#!/usr/bin/env python
"""Mutation testing (mutmut 3.8.1) of the modules whose tests must be strong: `make mutation`.

    scripts/mutation.py                          # every module in TESTS
    scripts/mutation.py src/detectlab/core/metrics.py --show   # one module, list surviving mutants
    scripts/mutation.py --json docs/mutation.json
    scripts/mutation.py src/detectlab/violence/strategy.py --only '*run_census*'   # only these mutants

Runs in a temporary copy of this checkout (so several runs can go on at once and the tree stays clean):
the whole package is copied and mutation narrowed with only_mutate (a copy of single files would make
mutants/src/detectlab a namespace package and every test would import the unmutated code; see
../shared/notes/mutation.md). Prints killed / total per module; "killed" counts mutants a test failed on
(or timed out on); survivors and mutants no selected test reaches count against the score.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: module -> the test files that guard it
TESTS: dict[str, list[str]] = {
    "src/detectlab/core/metrics.py": ["tests/core/test_metrics_splits.py",
                                      "tests/core/test_core_facilities.py::test_balanced_accuracy",
                                      "tests/core/test_core_facilities.py::test_majority_baseline_predicts_the_training_majority"],
    "src/detectlab/core/splits.py": ["tests/core/test_metrics_splits.py"],
    # units: the Ray test is left out (a Ray start per mutant); its paths are covered by the others
    "src/detectlab/core/units.py": ["tests/core/test_runs_units_config.py", "tests/core/test_units_ray_glue.py",
                                    "tests/core/test_units_modes.py",
                                    "tests/core/test_core_facilities.py::test_units_in_two_worker_processes_resume",
                                    "tests/core/test_core_facilities.py::test_bad_input_in_a_worker_process_is_one_input_error",
                                    "tests/core/test_core_facilities.py::test_ray_requests_gpus_when_the_units_run_on_cuda",
                                    "tests/core/test_core_facilities.py::test_resume_may_add_units_but_not_change_settings"],
    "src/detectlab/seizure/events.py": ["tests/seizure/test_seizure_events.py"],
    "src/detectlab/adversarial/detector.py": ["tests/adversarial/test_adversarial_detector.py"],
    # strategy: the in-process federation tests; the learning test under attack (30 s) is left out, its
    # aggregation choice is killed by test_robust_aggregators_by_hand
    "src/detectlab/violence/strategy.py": ["tests/violence/test_violence_strategy.py::test_check_update_by_hand",
                                           "tests/violence/test_violence_strategy.py::test_bound_counts_by_hand",
                                           "tests/violence/test_violence_strategy.py::test_robust_aggregators_by_hand",
                                           "tests/violence/test_violence_strategy.py::test_norm_clipping_bounds_each_update",
                                           "tests/violence/test_violence_strategy.py::test_short_reason_by_hand",
                                           "tests/violence/test_violence_strategy.py::test_server_state_round_trip",
                                           "tests/violence/test_violence_strategy.py::test_census_knows_each_partition_once",
                                           "tests/violence/test_violence_strategy.py::test_rejections_and_bounds_are_reported",
                                           "tests/violence/test_violence_strategy.py::test_partial_participation_samples_a_fraction",
                                           "tests/violence/test_violence_strategy.py::test_silent_node_ends_the_round_after_the_timeout",
                                           "tests/violence/test_violence_strategy.py::test_unavailable_node_is_named_by_partition",
                                           "tests/violence/test_violence_strategy.py::test_strategy_settings_by_hand",
                                           "tests/violence/test_violence_strategy.py::test_bytes_are_counted_from_the_messages",
                                           "tests/violence/test_violence_strategy.py::test_heads_are_keyed_by_run_experiment_and_strategy",
                                           "tests/violence/test_violence_strategy.py::test_fedper_heads_are_personal_and_bases_shared",
                                           "tests/violence/test_violence_strategy.py::test_interrupted_run_resumes_to_the_same_result",
                                           "tests/violence/test_violence_strategy.py::test_restarted_node_without_its_head_is_an_error",
                                           # the server side by hand with a toy ClientApp (well under 2 s each)
                                           "tests/violence/test_violence_strategy.py::test_check_update_reasons_are_exact",
                                           "tests/violence/test_violence_strategy.py::test_bound_counts_edges",
                                           "tests/violence/test_violence_strategy.py::test_short_reason_takes_the_last_message",
                                           "tests/violence/test_violence_strategy.py::test_sampling_is_pinned_to_the_seed",
                                           "tests/violence/test_violence_strategy.py::test_census_by_hand_errors_and_takeover",
                                           "tests/violence/test_violence_strategy.py::test_two_newcomers_for_one_partition_are_both_refused",
                                           "tests/violence/test_violence_strategy.py::test_round_waits_for_enough_nodes",
                                           "tests/violence/test_violence_strategy.py::test_exchange_by_hand",
                                           "tests/violence/test_violence_strategy.py::test_aggregate_train_by_hand",
                                           "tests/violence/test_violence_strategy.py::test_too_few_updates_stop_with_one_line",
                                           "tests/violence/test_violence_strategy.py::test_aggregate_evaluate_by_hand",
                                           "tests/violence/test_violence_strategy.py::test_run_starts_at_a_round_and_reports_each",
                                           "tests/violence/test_violence_strategy.py::test_load_state_dict_of_an_older_run",
                                           "tests/violence/test_violence_strategy.py::test_aggregator_defaults_by_hand"],
    "src/detectlab/violence/partition.py": ["tests/violence/test_violence_partition.py"],
    "src/detectlab/lesions/cocoeval.py": ["tests/lesions/test_lesions_cocoeval.py"],
    "src/detectlab/fluid/baseline.py": ["tests/fluid/test_fluid_baseline_saliency.py"],
    "src/detectlab/fluid/saliency.py": ["tests/fluid/test_fluid_baseline_saliency.py"],
}
KILLED = {"killed", "timeout"}


def _module_name(path: str) -> str:
    return path.removeprefix("src/").removesuffix(".py").replace("/", ".")


def _toml_list(items: list[str]) -> str:
    return "[" + ", ".join(json.dumps(i) for i in items) + "]"


def run(modules: list[str], children: int, show: bool, keep: bool, only: str = "") -> dict[str, dict]:
    tmp = Path(tempfile.mkdtemp(prefix="detectlab-mutation-"))
    try:
        for d in ("src", "tests", "benchmarks"):
            if (ROOT / d).exists():
                shutil.copytree(ROOT / d, tmp / d, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        tests = sorted({t for m in modules for t in TESTS[m]})
        py = (ROOT / "pyproject.toml").read_text()
        py = re.sub(r"(?ms)^\[tool\.mutmut\].*?(?=^\[|\Z)", "", py)
        py += ("\n[tool.mutmut]\nsource_paths = [\"src\"]\n"
               f"only_mutate = {_toml_list(modules)}\n"
               f"pytest_add_cli_args_test_selection = {_toml_list(tests)}\n"
               "pytest_add_cli_args = [\"-p\", \"no:cacheprovider\", \"-x\", \"-q\"]\n"
               "also_copy = [\"benchmarks\", \"tests\"]\n")
        (tmp / "pyproject.toml").write_text(py)
        mutmut = str(Path(sys.executable).with_name("mutmut"))
        env = {**os.environ, "DETECTLAB_THREADS": os.environ.get("DETECTLAB_THREADS", "1")}
        subprocess.run([mutmut, "run", "--max-children", str(children), *([only] if only else [])], cwd=tmp, env=env,
                       check=False)
        out = subprocess.run([mutmut, "results", "--all", "true"], cwd=tmp, env=env, capture_output=True,
                             text=True, check=False).stdout
        status: dict[str, Counter] = {m: Counter() for m in modules}
        survivors: dict[str, list[str]] = {m: [] for m in modules}
        for line in out.splitlines():
            if ":" not in line:
                continue
            name, st = (x.strip() for x in line.rsplit(":", 1))
            if only and not fnmatch.fnmatch(name, only):
                continue
            for m in modules:
                if name.startswith(_module_name(m) + "."):
                    status[m][st] += 1
                    if st not in KILLED:
                        survivors[m].append(f"{name} ({st})")
        report = {}
        for m in modules:
            c = status[m]
            total = sum(c.values())
            killed = sum(c[k] for k in KILLED)
            report[m] = {"killed": killed, "total": total, "score": killed / total if total else float("nan"),
                         "status": dict(c)}
            print(f"{m}: {killed}/{total} killed ({100 * report[m]['score']:.0f} %)  {dict(c)}")
            if show:
                for s in survivors[m]:
                    print("   ", s)
                    diff = subprocess.run([mutmut, "show", s.split(" ")[0]], cwd=tmp, capture_output=True,
                                          text=True).stdout
                    print("      " + "\n      ".join(diff.strip().splitlines()[-6:]))
        return report
    finally:
        if keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("modules", nargs="*", help="module paths (default: all in TESTS)")
    ap.add_argument("--children", type=int, default=2, help="parallel mutant runs [2]")
    ap.add_argument("--show", action="store_true", help="print the surviving mutants' diffs")
    ap.add_argument("--json", help="write the scores to this JSON file")
    ap.add_argument("--keep", action="store_true", help="keep the temporary copy (mutmut browse there)")
    ap.add_argument("--only", default="", help="run and score only the mutants whose names match this glob, "
                                                "e.g. '*run_census*' (names as `mutmut results` prints them)")
    args = ap.parse_args()
    modules = args.modules or list(TESTS)
    unknown = [m for m in modules if m not in TESTS]
    if unknown:
        print(f"mutation.py: not in TESTS: {', '.join(unknown)} (expected one of: {', '.join(TESTS)})", file=sys.stderr)
        return 2
    report = run(modules, args.children, args.show, args.keep, args.only)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
