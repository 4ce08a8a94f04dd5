"""The leaderboard across runs: ``rows.py`` reads a run directory, ``table.py`` ranks and formats,
``store.py`` keeps a leaderboard folder that concurrent runs append to, ``hook.py`` is what training
calls on finish (``leaderboard.path``); ``python -m ups.leaderboard`` (``__main__.py``)."""
