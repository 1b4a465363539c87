"""Where kdtune's MLflow record lives: the default local store, SQLite store files, and the
one tracking-URI resolver every command uses (checked for its form before anything starts).

Nothing here imports MLflow until a call needs it.
"""

from __future__ import annotations

import os
from pathlib import Path

from kdtune.errors import KdtuneError
from kdtune.urls import check_tracking_uri

STORE_DIRNAME = "kdtune-runs"
DB_FILENAME = "mlflow.db"


def default_store(cwd: Path | None = None) -> Path:
    """The default local store: ``<cwd>/kdtune-runs`` as an absolute path."""
    return (Path.cwd() if cwd is None else Path(cwd)).resolve() / STORE_DIRNAME


def default_tracking_uri(store: Path) -> str:
    """SQLite URI of the MLflow database inside ``store`` (absolute: trials change cwd)."""
    return f"sqlite:///{Path(store).resolve() / DB_FILENAME}"


def resolve_tracking_uri(flag: str | None = None) -> str:
    """The MLflow tracking URI of a command: ``--mlflow-uri`` (``flag``), else
    ``$MLFLOW_TRACKING_URI``, else the SQLite store ``./kdtune-runs/mlflow.db``. The one given
    is checked for its form: a one-line error naming it and the forms allowed."""
    if flag is not None:
        return check_tracking_uri(flag)
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return check_tracking_uri(env, "MLFLOW_TRACKING_URI")
    return default_tracking_uri(default_store())


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI, or None for any other kind of store."""
    prefix = "sqlite:///"
    if not tracking_uri.startswith(prefix):
        return None
    rest = tracking_uri[len(prefix):].split("?", 1)[0]
    if not rest or rest == ":memory:":
        return None
    return Path(rest).resolve()


def require_store(tracking_uri: str) -> None:
    """Raise a one-line error if ``tracking_uri`` is a SQLite file that does not exist."""
    path = sqlite_path(tracking_uri)
    if path is not None and not path.is_file():
        raise KdtuneError(f"no kdtune store at {path}; run `kdtune search` first or pass "
                          "--mlflow-uri")


def transient_tracking_error(exc: BaseException) -> bool:
    """An MLflow call that failed because the tracking server (or the SQLite file) did not
    answer -- worth retrying -- rather than because of what it was asked."""
    from mlflow.exceptions import MlflowException

    if isinstance(exc, MlflowException):
        if exc.error_code in ("TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED"):
            return True
        message = str(exc)
        return exc.error_code == "INTERNAL_ERROR" and (
            message.startswith("API request to") or "database is locked" in message)
    return isinstance(exc, OSError)  # requests' connection errors are OSErrors
