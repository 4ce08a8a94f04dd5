"""UPS, the Universal Physics Stack: neural PDE surrogates on PDEBench, from a laptop to a cluster."""

__version__ = "0.1.0"


def load_model(path, device="cpu"):
    """The model of an export folder (``python -m ups.export``), in eval mode, read without any pickle."""
    from ups.exported import load_model as _load

    return _load(path, device)
