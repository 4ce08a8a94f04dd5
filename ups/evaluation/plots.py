"""Figures shared by the run report and the evaluation tables, drawn without pyplot (Agg canvas)."""

from __future__ import annotations


def figure(**kw):
    """A matplotlib Figure on the non-interactive Agg canvas (no pyplot, no global state)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError('the run report needs matplotlib: pip install "ups[plot]"') from err
    return FigureCanvasAgg(Figure(**kw)).figure
