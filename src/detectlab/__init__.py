"""detectlab: five published detection systems as one tested package and CLI."""

__version__ = "0.1.0"

#: The systems, in the order the demo runs them. Each is a subpackage with the same shape:
#: data, synthetic, model, train, experiment, predict.
SYSTEMS = ("adversarial", "seizure", "violence", "fluid", "lesions")
