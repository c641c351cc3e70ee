"""detectlab: five published detection systems as one tested package and CLI."""

__version__ = "0.1.0"

#: The systems, in the order the demo runs them. Each is a subpackage with the same shape:
#: config, data, synthetic, model, baseline, train, experiment, evaluate, predict.
SYSTEMS = ("adversarial", "seizure", "violence", "fluid", "lesions")

#: One line per system, for the CLI's help and the demo report.
DESCRIPTIONS = {
    "adversarial": "PGD adversarial examples on MNIST detected by a steganalysis statistic",
    "seizure": "inter-patient EEG seizure detection, domain-adversarial CNN-BiLSTM",
    "violence": "violence detection in video with personalized federated learning (Flower)",
    "fluid": "macular fluid detection in OCT B-scans with ten ImageNet CNNs",
    "lesions": "COVID-19 lesion segmentation (lightweight Mask R-CNN) and COVID-CT-Mask-Net",
}


def config_module(system: str):
    """The module holding a system's Config and DATA_SUBDIR: ``detectlab.<system>.config``
    (``experiment`` in the older layout)."""
    import importlib
    from pathlib import Path

    name = "config" if (Path(__file__).resolve().parent / system / "config.py").exists() else "experiment"
    return importlib.import_module(f"detectlab.{system}.{name}")
