"""New MLflow SQLite stores in milliseconds instead of seconds.

``MlflowClient("sqlite:///new.db")`` creates the database and runs every schema migration,
4-12 s of CPU on the development machine, paid by the first sweep in every new folder (and
by every test that makes a store). The first store kdtune sees MLflow create is snapshotted,
still empty, as a template in kdtune's cache (one per MLflow version); later stores are copies
of it. The template is a whole SQLite file copied as it is (MLflow's Default experiment
included, which kdtune never uses); kdtune creates its own experiment in each copy, with the
copy's artifact location.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import uuid
from pathlib import Path

from kdtune.cache import cache_root


def template_path() -> Path:
    """The empty, migrated store for the installed MLflow version."""
    import mlflow

    return cache_root() / "mlflow" / f"empty-store-{mlflow.__version__}.db"


def copy_template(db: Path) -> bool:
    """Create the store ``db`` (absent) as a copy of the template; False if there is none.

    The copy is written under a temporary name and linked into place, so a process racing to
    create the same store never sees half a database, and an existing store is never replaced.
    """
    template = template_path()
    if not template.is_file():
        return False
    db.parent.mkdir(parents=True, exist_ok=True)
    copy = db.with_name(f".{db.name}-{uuid.uuid4().hex}")
    try:
        shutil.copyfile(template, copy)
        try:
            os.link(copy, db)
        except FileExistsError:
            pass
        except OSError:  # a filesystem without hard links
            if not db.exists():
                os.replace(copy, db)
    finally:
        copy.unlink(missing_ok=True)
    return True


def save_template(db: Path) -> None:
    """Keep a copy of ``db`` -- a store MLflow has just created, before anything is logged
    to it -- as the template. No-op if one exists."""
    template = template_path()
    if template.is_file():
        return
    template.parent.mkdir(parents=True, exist_ok=True)
    scratch = template.with_name(f".{template.stem}-{uuid.uuid4().hex}.db")
    try:
        with contextlib.closing(sqlite3.connect(db)) as source:
            source.execute("VACUUM INTO ?", (str(scratch),))  # one consistent file
        os.replace(scratch, template)
    finally:
        scratch.unlink(missing_ok=True)


def create_sqlite_store(db: Path) -> None:
    """Create the MLflow store ``db`` (absent): a template copy, else MLflow's own creation
    (then kept as the template)."""
    if copy_template(db):
        return
    from mlflow.tracking import MlflowClient

    db.parent.mkdir(parents=True, exist_ok=True)
    MlflowClient(f"sqlite:///{db}").search_experiments()
    save_template(db)
