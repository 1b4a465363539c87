"""New MLflow SQLite stores in milliseconds instead of seconds.

``MlflowClient("sqlite:///new.db")`` creates the database and runs every schema migration,
4-12 s of CPU on the development machine, paid by the first sweep in every new folder (and
by every test that makes a store). kdtune runs the migrations once per MLflow version into an
empty template in its cache and copies that. The template holds no experiment: MLflow adds
its Default experiment when it opens the copy, with the copy's own artifact location.
"""

from __future__ import annotations

import contextlib
import logging
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


def create_sqlite_store(db: Path) -> None:
    """Create the MLflow store ``db`` (which must not exist yet) from the template.

    Files are written under temporary names and moved into place, so a process that races
    to create the same store or template never sees half a database; the loser's copy is
    dropped.
    """
    template = template_path()
    if not template.is_file():
        _build_template(template)
    db.parent.mkdir(parents=True, exist_ok=True)
    _place(template, db)


def _build_template(template: Path) -> None:
    from mlflow.tracking import MlflowClient

    template.parent.mkdir(parents=True, exist_ok=True)
    scratch = template.with_name(f".{template.stem}-{uuid.uuid4().hex}.db")
    quiet = logging.getLogger("mlflow.store.db.utils")  # two INFO lines about migrations
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        client = MlflowClient(f"sqlite:///{scratch}")
        client._tracking_client.store.engine.dispose()  # every connection closed
    finally:
        quiet.setLevel(level)
    compact = scratch.with_suffix(".compact")
    try:
        with contextlib.closing(sqlite3.connect(scratch)) as con:
            with con:
                con.execute("DELETE FROM experiment_tags WHERE experiment_id = 0")
                con.execute("DELETE FROM experiments WHERE experiment_id = 0")
            con.execute("VACUUM INTO ?", (str(compact),))  # one consistent file
        os.replace(compact, template)
    finally:
        scratch.unlink(missing_ok=True)
        compact.unlink(missing_ok=True)


def _place(template: Path, db: Path) -> None:
    copy = db.with_name(f".{db.name}-{uuid.uuid4().hex}")
    try:
        shutil.copyfile(template, copy)
        try:
            os.link(copy, db)  # never replaces a store someone else just created
        except FileExistsError:
            pass
        except OSError:  # a filesystem without hard links
            if not db.exists():
                os.replace(copy, db)
    finally:
        copy.unlink(missing_ok=True)
