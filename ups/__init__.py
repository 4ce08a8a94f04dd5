"""UPS, the Universal Physics Stack: neural PDE surrogates on PDEBench, from a laptop to a cluster."""

__version__ = "0.1.0"
