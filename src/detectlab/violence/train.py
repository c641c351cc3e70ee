"""`detectlab violence train`: one federated training (``train_experiment`` x ``train_strategy``, FedPer on the
balanced 2-client partition by default) on Flower's simulation engine. The run folder holds the global base
and every client's personalised model (``checkpoints/<exp>-<strategy>-client<K>.safetensors``), which
``detectlab violence predict RUN --client K`` uses. Same outputs as ``run`` for that single unit.
"""

from __future__ import annotations

from typing import Any

from detectlab.core.runs import Run


def run(cfg: Any, run: Run) -> dict[str, Any]:
    from detectlab.violence import experiment

    single = experiment.with_single(cfg, cfg.train_experiment, cfg.train_strategy)
    return experiment.run(single, run)
