"""Where a sweep's records live: the MLflow store, the Ray storage and the study storage
(:class:`Store`), and the locations in the Ray storage, local folders or URIs alike.

A Ray storage is a local folder (an absolute :class:`~pathlib.Path`) or a URI such as
``s3://bucket/path`` that every node of a cluster reaches (read through pyarrow).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kdtune.cache import cache_root
from kdtune.mlflow_store import default_store, resolve_tracking_uri, sqlite_path
from kdtune.tune.study import SweepStudy, default_study_url, is_server
from kdtune.urls import check_reachable, check_storage_flags, redact


@dataclass(frozen=True)
class Store:
    """Where a sweep's records go: the MLflow store, the Ray storage and the study storage."""

    tracking_uri: str
    # Ray experiments live in storage/<sweep name>: a local folder (absolute Path) or a URI
    # such as s3://bucket/path that every node of a cluster reaches.
    storage: Path | str
    study_url: str

    @classmethod
    def resolve(cls, mlflow_uri: str | None = None, storage: str | None = None,
                study_storage: str | None = None) -> Store:
        """Defaults: ``$MLFLOW_TRACKING_URI`` if set, and one local folder ``./kdtune-runs``
        with ``mlflow.db``, ``optuna.db`` and ``ray/``. The study's default is ``optuna.db``
        beside an SQLite MLflow store, else in a local Ray storage folder, else in
        ``./kdtune-runs``."""
        root = default_store()
        uri = resolve_tracking_uri(mlflow_uri)
        check_storage_flags(storage, study_storage)
        if storage and is_uri(storage):
            ray_storage: Path | str = storage.rstrip("/")
        else:
            ray_storage = Path(storage).expanduser().resolve() if storage else root / "ray"
        # the study goes beside an SQLite MLflow store, else into a local Ray storage folder
        db = sqlite_path(uri)
        folder = db.parent if db is not None else \
            ray_storage if isinstance(ray_storage, Path) else root
        return cls(uri, ray_storage, study_storage or default_study_url(folder))

    def experiment_dir(self, name: str) -> Path | str:
        return join_location(self.storage, name)

    def sweep_dir(self, name: str, recorded: str, storage_given: bool) -> Path | str:
        """The first Ray experiment of sweep ``name``: in the ``--storage`` given to this
        command, else where the sweep recorded it (``recorded``)."""
        if storage_given:
            return self.experiment_dir(name)
        return recorded if is_uri(recorded) else Path(recorded)

    @property
    def teachers(self) -> Path:
        """Where the driver keeps teachers it trains (they reach trials via the object store,
        so a driver-local folder does; with a URI storage, the driver's kdtune cache)."""
        if isinstance(self.storage, Path):
            return self.storage / "_teachers"
        return cache_root() / "teachers"

    def describe(self) -> str:
        return (f"MLflow {redact(self.tracking_uri)}, Ray storage {redact(str(self.storage))}, "
                f"Optuna study storage {redact(self.study_url)}")

    def check_servers(self) -> None:
        """A one-line error, before Ray starts, when the MLflow server or the study's database
        server does not answer (SQLite files and journal files are opened later)."""
        self.check_tracking_server()
        if is_server(self.study_url):
            SweepStudy(self.study_url, "").exists()  # connects: a refused connection is one line

    def check_tracking_server(self) -> None:
        """A one-line error when an MLflow tracking server does not answer."""
        if self.tracking_uri.startswith(("http://", "https://")):
            check_reachable(self.tracking_uri, "the MLflow tracking server")

    @property
    def logs(self) -> Path:
        """Where the driver writes Ray Tune's own log records (not shown on the terminal)."""
        if isinstance(self.storage, Path):
            return self.storage / "_logs"
        return cache_root() / "logs"


def is_uri(location: str | Path) -> bool:
    """A storage URI (``s3://``, ``gs://``, ``file://``) reached through pyarrow, not a path."""
    return "://" in str(location)


def location_exists(location: Path | str) -> bool:
    """Whether a local path or a storage URI exists."""
    if not is_uri(location):
        return Path(location).exists()
    import pyarrow.fs

    fs, path = pyarrow.fs.FileSystem.from_uri(str(location))
    return fs.get_file_info(path).type != pyarrow.fs.FileType.NotFound


def join_location(base: Path | str, name: str) -> Path | str:
    """``base/name``: a path under a local folder, a URI under a URI."""
    if is_uri(base):
        return f"{str(base).rstrip('/')}/{name}"
    return Path(base) / name


def split_location(location: Path | str) -> tuple[str, str]:
    """``(parent, name)`` of a local folder or a URI: how Ray Tune names an experiment
    (``storage_path`` and ``name``)."""
    if is_uri(location):
        parent, name = str(location).rstrip("/").rsplit("/", 1)
        return parent, name
    return str(Path(location).parent), Path(location).name
