"""kdtune: hyper-parameter search for knowledge distillation; the package root holds the version.

``import kdtune`` imports nothing else: each layer (the trainer and PyTorch, the search and
Ray, the record and MLflow) is imported from its own module when used, e.g.
``from kdtune.tracking import best_configs``.
"""

from __future__ import annotations

__version__ = "0.1.0"
