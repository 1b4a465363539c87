"""kdtune: hyper-parameter search for knowledge distillation.

``import kdtune`` loads only the PyTorch core; the search (Ray) and tracking (MLflow)
layers are imported lazily when used.
"""

from __future__ import annotations

__version__ = "0.1.0"


def __getattr__(name: str):  # lazy: importing kdtune must not import MLflow or pandas
    if name == "best_configs":
        from kdtune.tracking import best_configs

        return best_configs
    raise AttributeError(f"module 'kdtune' has no attribute {name!r}")
