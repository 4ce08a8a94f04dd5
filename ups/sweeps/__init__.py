"""Sweeps: the report of a Hydra multirun (``report.py``, ``python -m ups.report``) and the Hydra
callback that writes it when a multirun ends (``callback.py``)."""
