"""Teacher checkpoints: fingerprint, compatibility check, cached teacher outputs.

A checkpoint is a plain dict (loadable with ``torch.load(..., weights_only=True)``)::

    {"format": "kdtune-teacher/1", "fingerprint": str,
     "model": {"name": str, "kwargs": dict},
     "data": {"dataset", "split_seed", "val_fraction", "num_classes", "in_shape"},
     "metrics": {...}, "state_dict": {...}}

The fingerprint hashes the model spec, the data spec (with ``split_seed`` but not the
training ``seed``, so one teacher serves students of every seed) and the weights.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdtune.cache import cache_root
from kdtune.data import Augmentation, DataSplits
from kdtune.errors import KdtuneError
from kdtune.metrics import Latency, cpu_latency, evaluate, predict
from kdtune.models import create_model

FORMAT = "kdtune-teacher/1"
#: Largest table of teacher outputs computed once and kept (the per-view logits a sweep ships
#: to every trial, fp16; a trial's cached embeddings, float32), in bytes.
MAX_TABLE_BYTES = 2 * 1024**3


#: Test accuracy by (teacher fingerprint, data key), per process (see Teacher.test_accuracy).
_TEST_ACCURACY: dict[tuple[str, str], float] = {}


@dataclass
class Teacher:
    """A frozen teacher network with its identity and (optionally) cached outputs."""

    model: nn.Module
    fingerprint: str
    spec: dict[str, Any]
    # Teacher logits on un-augmented training sets, by ``DataSplits.key``. Filled once (on a
    # sweep's driver) and carried along when the teacher is shipped to trials.
    outputs: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    _latency: dict[int, Latency] = field(default_factory=dict, repr=False)

    @property
    def in_shape(self) -> tuple[int, int, int]:
        return tuple(self.spec["data"]["in_shape"])  # type: ignore[return-value]

    def latency(self, batch_size: int, known: Latency | None = None) -> Latency:
        """CPU latency of a forward pass, timed as a student's is (``cpu_latency``), once per
        batch size and remembered; a figure ``known`` from before (what a sweep's trials
        reported) is taken as it is."""
        if batch_size not in self._latency:
            self._latency[batch_size] = known if known is not None else \
                cpu_latency(self.model, self.in_shape, batch_size)
        return self._latency[batch_size]

    def test_accuracy(self, data: DataSplits) -> float:
        """Accuracy on ``data``'s test set (for reports), evaluated once per teacher and data
        in this process: every trial of a sweep reports it, a worker computes it once."""
        key = (self.fingerprint, data.key)
        if key not in _TEST_ACCURACY:
            device = next(self.model.parameters()).device
            _TEST_ACCURACY[key] = evaluate(self.model, data.x_test.to(device),
                                           data.y_test.to(device))[0]
        return _TEST_ACCURACY[key]

    def to(self, device: torch.device | str) -> Teacher:
        self.model.to(device)
        return self


def data_spec(data: DataSplits, split_seed: int, val_fraction: float) -> dict[str, Any]:
    """What a teacher must share with the students it teaches."""
    return {"dataset": data.name, "split_seed": split_seed, "val_fraction": val_fraction,
            "num_classes": data.num_classes, "in_shape": list(data.in_shape)}


def weights_hash(state_dict: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for key in sorted(state_dict):
        h.update(key.encode())
        h.update(state_dict[key].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def fingerprint(model_spec: dict[str, Any], data: dict[str, Any], wh: str) -> str:
    blob = json.dumps({"model": model_spec, "data": data, "weights": wh}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temp file in the same folder, then rename: never half-written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_teacher(model: nn.Module, model_spec: dict[str, Any], data: dict[str, Any],
                 metrics: dict[str, float], out_dir: str | Path, *,
                 train_config: dict[str, Any] | None = None) -> Path:
    """Write a teacher checkpoint named after its fingerprint under ``out_dir``.

    ``train_config`` (the config it was trained with) lets a later request reuse it.
    """
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    fp = fingerprint(model_spec, data, weights_hash(state))
    path = Path(out_dir) / f"teacher-{model_spec['name']}-{fp}.pt"
    atomic_save({"format": FORMAT, "fingerprint": fp, "model": model_spec, "data": data,
                 "metrics": metrics, "train_config": train_config, "state_dict": state}, path)
    return path


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load and verify a teacher checkpoint file (weights only, no pickled code)."""
    path = Path(path).expanduser()
    if path.is_dir():
        inside = sorted(p.name for p in path.glob("teacher-*.pt"))[:3]
        holds = f" (it holds {', '.join(inside)})" if inside else ""
        raise KdtuneError(f"teacher {str(path)!r} is a folder{holds}; give a teacher "
                          "checkpoint file (.pt) from `kdtune teacher`, e.g. "
                          f"{path / (inside[0] if inside else 'teacher-mlp-<fingerprint>.pt')}")
    if not path.is_file():
        raise KdtuneError(f"teacher checkpoint {str(path)!r} does not exist; make one with "
                          "`kdtune teacher --out DIR`")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise KdtuneError(f"{path} is not a kdtune teacher checkpoint "
                          f"({type(exc).__name__})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise KdtuneError(f"{path} is not a kdtune teacher checkpoint (format {FORMAT!r})")
    try:
        expected = fingerprint(ckpt["model"], ckpt["data"], weights_hash(ckpt["state_dict"]))
    except (KeyError, TypeError, AttributeError):
        raise KdtuneError(f"{path}: incomplete kdtune teacher checkpoint (file altered?)"
                          ) from None
    if expected != ckpt.get("fingerprint"):
        raise KdtuneError(f"{path}: fingerprint does not match the weights (file altered?)")
    return ckpt


def architecture(ckpt: dict[str, Any]) -> tuple[str, dict[str, Any], int, tuple[int, ...]]:
    """The model a teacher checkpoint holds: name, options, classes and input shape."""
    return (ckpt["model"]["name"], dict(ckpt["model"]["kwargs"]),
            int(ckpt["data"]["num_classes"]), tuple(ckpt["data"]["in_shape"]))


def checkpoint_architecture(path: str | Path
                            ) -> tuple[str, dict[str, Any], int, tuple[int, ...]] | None:
    """:func:`architecture` of the checkpoint at ``path``, its weights not read (memory-
    mapped, not verified), or None when the file is not one (:func:`read_checkpoint` says
    why)."""
    try:
        return architecture(torch.load(path, map_location="cpu", weights_only=True,
                                       mmap=True))
    except Exception:
        return None


def teacher_from_checkpoint(ckpt: dict[str, Any]) -> Teacher:
    spec = {k: ckpt[k] for k in ("model", "data", "metrics")}
    name, kwargs, num_classes, in_shape = architecture(ckpt)
    # Building the model draws random initial weights; keep that off the global RNG so that
    # loading a teacher inside a run does not shift the student's dropout stream.
    with torch.random.fork_rng(devices=[]):
        model = create_model(name, num_classes, in_shape, **kwargs)
    model.load_state_dict(ckpt["state_dict"])
    model.eval().requires_grad_(False)
    return Teacher(model=model, fingerprint=ckpt["fingerprint"], spec=spec)


def load_teacher(path: str | Path) -> Teacher:
    """Load a teacher checkpoint into a frozen model in eval mode."""
    return teacher_from_checkpoint(read_checkpoint(path))


def check_compatible(teacher: Teacher, expected: dict[str, Any], source: str = "teacher") -> None:
    """Refuse a teacher trained on other data than the student's (one-line error)."""
    got = teacher.spec["data"]
    diffs = [f"{k} {got.get(k)!r} (student: {expected[k]!r})" for k in expected
             if got.get(k) != expected[k]]
    if diffs:
        raise KdtuneError(f"{source} {teacher.fingerprint} does not match this run's data: "
                          f"{'; '.join(diffs)}; train a matching one with `kdtune teacher`")


def cache_dir() -> Path:
    """Where cached teacher outputs live (under :func:`kdtune.cache.cache_root`)."""
    return cache_root() / "teacher-outputs"


def train_logits(teacher: Teacher, data: DataSplits, *, root: Path | None = None) -> torch.Tensor:
    """Teacher logits (eval mode, float32, CPU) on the un-augmented training set.

    Computed once per (teacher fingerprint, training set), kept on the teacher and cached on
    disk; a cache file of the wrong shape is recomputed.
    """
    def compute() -> torch.Tensor:
        device = next(teacher.model.parameters()).device
        return predict(teacher.model, data.x_train.to(device)).cpu()

    return _outputs(teacher, data.key, (len(data.x_train), data.num_classes), compute, root)


def embedding_width(teacher: Teacher, data: DataSplits) -> int:
    """The width of the teacher's embedding (the pre-logit vector of ``forward_features``)."""
    model = teacher.model.eval()
    with torch.no_grad():
        x = data.x_train[:1].to(next(model.parameters()).device)
        return int(model.forward_features(x).embedding.shape[1])


def embeddings_fit(teacher: Teacher, data: DataSplits) -> bool:
    """Whether the table of :func:`train_embeddings` (float32) stays under the cap."""
    return len(data.x_train) * embedding_width(teacher, data) * 4 <= MAX_TABLE_BYTES


def train_embeddings(teacher: Teacher, data: DataSplits, *, root: Path | None = None,
                     batch_size: int = 1024) -> torch.Tensor:
    """Teacher embeddings (the pre-logit vectors of ``forward_features``; eval mode, float32,
    CPU) on the un-augmented training set, cached like :func:`train_logits`."""
    model = teacher.model
    device = next(model.parameters()).device
    width = embedding_width(teacher, data)

    def compute() -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([model.forward_features(data.x_train[i:i + batch_size].to(device))
                              .embedding.float().cpu()
                              for i in range(0, len(data.x_train), batch_size)])

    return _outputs(teacher, f"{data.key}-embedding", (len(data.x_train), width), compute, root)


def view_key(data: DataSplits, augment: Augmentation) -> str:
    """Cache key of the per-view teacher outputs of one training set and augmentation."""
    return f"{data.key}-views-p{augment.pad}{'f' if augment.flip else ''}"


def view_logits(teacher: Teacher, data: DataSplits, augment: Augmentation, *,
                root: Path | None = None, batch_size: int = 1024,
                compute: Callable[[], torch.Tensor] | None = None) -> torch.Tensor:
    """Teacher logits for every (training sample, augmentation view): ``(N, V, C)`` float16.

    Augmentation is a finite set of views (pad-p crop x flip), so the teacher's output for
    any augmented image a student will ever see can be computed once per teacher and shared
    by every trial; a trial then looks logits up instead of running the teacher. Cached in
    memory on the teacher and on disk like :func:`train_logits`. ``compute`` replaces the
    local computation when the table is not cached (a sweep spreads it over its Ray cluster,
    ``kdtune.tune.view_table``); it must return what :func:`view_block` gives for all views.
    """
    expected = (len(data.x_train), augment.num_views, data.num_classes)

    def local() -> torch.Tensor:
        return view_block(teacher.model, data.x_train, augment, range(augment.num_views),
                          batch_size=batch_size)

    return _outputs(teacher, view_key(data, augment), expected, compute or local, root)


def view_block(model: nn.Module, x: torch.Tensor, augment: Augmentation, views: Sequence[int],
               *, batch_size: int = 1024) -> torch.Tensor:
    """Logits ``(len(x), len(views), C)`` float16 (CPU) of ``model`` on ``x`` under ``views``.

    Samples go in chunks of ``batch_size``, one view at a time, so that any split of the
    views over several workers gives exactly the numbers of one pass over all of them.
    """
    device = next(model.parameters()).device
    out: torch.Tensor | None = None
    for start in range(0, len(x), batch_size):
        chunk = x[start:start + batch_size].to(device)
        for j, v in enumerate(views):
            ids = torch.full((len(chunk),), v, dtype=torch.int64, device=device)
            logits = predict(model, augment.apply(chunk, ids), batch_size=batch_size)
            if out is None:
                out = torch.empty((len(x), len(views), logits.shape[1]), dtype=torch.float16)
            out[start:start + len(chunk), j] = logits.half().cpu()
    assert out is not None, "no samples or no views"
    return out


def _outputs(teacher: Teacher, key: str, expected: tuple[int, ...],
             compute: Callable[[], torch.Tensor], root: Path | None) -> torch.Tensor:
    """Teacher outputs under ``key``: from memory, else ``<cache>/<fingerprint>-<key>.pt`` if
    it has the expected shape, else computed and written (atomically; an unwritable cache
    only costs speed). Kept on ``teacher.outputs`` either way."""
    held = teacher.outputs.get(key)
    if held is not None and tuple(held.shape) == expected:
        return held
    path = (root or cache_dir()) / f"{teacher.fingerprint}-{key}.pt"
    logits = None
    if path.is_file():
        try:
            cached = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(cached, torch.Tensor) and tuple(cached.shape) == expected:
                logits = cached
        except Exception:  # a broken cache file is recomputed
            pass
    if logits is None:
        logits = compute()
        with contextlib.suppress(OSError):
            atomic_save(logits, path)
    teacher.outputs[key] = logits
    return logits
