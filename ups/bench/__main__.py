"""``python -m ups.bench [overrides]``: the speed of the composed run, every switch against the
baseline, in one process (``bench.*`` settings; docs/benchmarks.md). ``bench.axis=batch|model|tasks|ranks``
with ``bench.points=[...]`` measures one scaling axis instead and plots it."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from ups.config import register_configs
from ups.errors import exit_on_error

register_configs()


@hydra.main(version_base="1.3", config_path="pkg://ups.conf", config_name="train")
def main(cfg: DictConfig) -> None:
    """Measure, print, write ``bench.json`` in the run directory and the section of ``bench.docs``."""
    from ups.bench.run import bench  # torch after composition: --help stays fast

    with exit_on_error():
        bench(cfg)


if __name__ == "__main__":
    main()
