"""kdtune: hyper-parameter search for knowledge distillation.

``import kdtune`` loads only the PyTorch core; the search (Ray) and tracking (MLflow)
layers are imported lazily when used.
"""

from __future__ import annotations

__version__ = "0.1.0"
