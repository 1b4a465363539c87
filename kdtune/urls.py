"""Where a sweep's records live, as the user names them: the MLflow tracking URI, the Ray storage
and the Optuna study storage. Each is checked for its form before anything starts (one-line
errors naming the value and the forms allowed) and is only ever shown without its credentials.

A URL may carry a user and password (``http://user:secret@host:5000``). kdtune prints, logs and
records such a URL as ``http://user:***@host:5000``; the objects that Ray pickles into its
experiment state (a :class:`~kdtune.tracking.Tracker`, a study handle) pickle the redacted
form too and find the full URL again in the process that resumes the sweep, which is given it
on its command line (:func:`remember`, :func:`recall`).
"""

from __future__ import annotations

import contextlib
import re
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from kdtune.errors import KdtuneError

_CREDENTIALS = re.compile(r"(?<=://)([^:/@\s]+):([^@/\s]*)@")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")

TRACKING_FORMS = "http(s)://HOST:PORT, sqlite:///PATH, file:///PATH or postgresql://USER@HOST/DB"
STORAGE_SCHEMES = ("s3", "gs", "gcs", "hdfs", "abfs", "abfss", "file")
STUDY_FORMS = ("an SQLAlchemy URL (sqlite:///PATH, postgresql://USER@HOST/DB, "
               "mysql://USER@HOST/DB) or a journal file path")
RAY_FORMS = "auto or HOST:PORT (the head node, e.g. 10.0.0.1:6379)"
_DATABASES = ("sqlite", "postgresql", "mysql", "mssql", "oracle")
T = TypeVar("T")

#: Redacted URL -> the URL as given, for the URLs this process was given.
_GIVEN: dict[str, str] = {}


def redact(text: str) -> str:
    """``text`` with every ``scheme://user:password@`` written ``scheme://user:***@``."""
    return _CREDENTIALS.sub(r"\1:***@", text)


def remember(url: str) -> str:
    """Note ``url`` as given to this process (see :func:`recall`); return it."""
    _GIVEN[redact(url)] = url
    return url


def recall(url: str) -> str:
    """The full URL this process was given for the redacted ``url`` (else ``url`` itself)."""
    return _GIVEN.get(url, url)


def sqlalchemy_url(url: str) -> str:
    """``url`` with a PostgreSQL driver that is installed: SQLAlchemy's default for
    ``postgresql://`` is psycopg 3; kdtune ships psycopg2 and uses it when psycopg 3 is absent."""
    import importlib.util

    if url.startswith("postgresql://") and importlib.util.find_spec("psycopg") is None and \
            importlib.util.find_spec("psycopg2") is not None:
        return "postgresql+psycopg2://" + url.removeprefix("postgresql://")
    return url


def check_tracking_uri(uri: str, flag: str = "--mlflow-uri") -> str:
    """``uri`` if it is a tracking URI MLflow can use; else a one-line error."""
    shown = redact(uri)
    match = _SCHEME.match(uri)
    if not uri.strip() or match is None or (
            "://" not in uri and match.group(1) != "databricks"):
        raise KdtuneError(f"{flag} {shown!r} is not a URI; give {TRACKING_FORMS}")
    scheme = match.group(1).lower()
    base = scheme.split("+", 1)[0]
    if base in ("http", "https"):
        _check_host(uri, shown, flag, TRACKING_FORMS)
    elif base == "sqlite":
        if not uri.startswith("sqlite:///") or len(uri) == len("sqlite:///"):
            raise KdtuneError(f"{flag} {shown!r}: an SQLite store is sqlite:///PATH (three "
                              "slashes, then the file)")
    elif base == "file":
        if not urlsplit(uri).path:
            raise KdtuneError(f"{flag} {shown!r}: a file store is file:///PATH")
    elif base in _DATABASES:
        _check_sqlalchemy(uri, shown, flag, TRACKING_FORMS)
    elif not base.startswith("databricks"):
        raise KdtuneError(f"{flag} {shown!r}: unknown scheme {scheme!r}; give {TRACKING_FORMS}")
    return uri


def check_storage_flags(storage: str | None = None, study_storage: str | None = None) -> None:
    """Check the form of the Ray storage (``--storage``) and the study storage
    (``--study-storage``) a command is given: one-line errors. (The tracking URI:
    :func:`kdtune.mlflow_store.resolve_tracking_uri`.)"""
    if storage is not None:
        check_storage(storage)
    if study_storage is not None:
        check_study_url(study_storage)


def check_storage(location: str, flag: str = "--storage") -> str:
    """``location`` if it is a folder path or a storage URI Ray reaches; else a one-line
    error."""
    shown = redact(location)
    if not location.strip():
        raise KdtuneError(f"{flag} is empty; give a folder or "
                          f"{', '.join(s + '://...' for s in STORAGE_SCHEMES)}")
    match = _SCHEME.match(location)
    if "://" in location:
        scheme = match.group(1).lower() if match else ""
        if scheme not in STORAGE_SCHEMES:
            raise KdtuneError(f"{flag} {shown!r}: unknown scheme {scheme!r}; give a folder or "
                              f"one of {', '.join(s + '://' for s in STORAGE_SCHEMES)}")
        if not location.split("://", 1)[1].strip("/"):
            raise KdtuneError(f"{flag} {shown!r} names no bucket or path")
    elif match is not None and len(match.group(1)) > 1 and location[len(match.group(0)):
                                                                     ].startswith("/"):
        raise KdtuneError(f"{flag} {shown!r} looks like a URI without '://'; give a folder or "
                          f"one of {', '.join(s + '://' for s in STORAGE_SCHEMES)}")
    return location


def check_study_url(url: str, flag: str = "--study-storage") -> str:
    """``url`` if it is an SQLAlchemy URL or a journal file path; else a one-line error."""
    shown = redact(url)
    if not url.strip():
        raise KdtuneError(f"{flag} is empty; give {STUDY_FORMS}")
    match = _SCHEME.match(url)
    if "://" in url:
        _check_sqlalchemy(url, shown, flag, STUDY_FORMS)
    elif match is not None and len(match.group(1)) > 1 and \
            match.group(1).split("+", 1)[0].lower() in _DATABASES:
        raise KdtuneError(f"{flag} {shown!r} is not an SQLAlchemy URL (scheme://...); give "
                          f"{STUDY_FORMS}")
    return url


_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?)$")


def check_ray_address(address: str, flag: str = "--address") -> str:
    """``address`` if it names a Ray cluster: ``auto``, ``HOST:PORT`` (a head node's GCS,
    e.g. ``10.0.0.1:6379``), or a Ray Client address ``ray://HOST:PORT``; else a one-line
    error naming the forms. Checked before Ray is imported."""
    shown = redact(address)
    if address == "auto":
        return address
    rest = address[len("ray://"):] if address.startswith("ray://") else address
    host, colon, port = rest.rpartition(":")
    if not colon or not host or _HOST.match(host) is None:
        raise KdtuneError(f"{flag} {shown!r} is not a Ray cluster address; give {RAY_FORMS}")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise KdtuneError(f"{flag} {shown!r}: the port must be a number in 1..65535; give "
                          f"{RAY_FORMS}")
    return address


def _check_host(uri: str, shown: str, flag: str, forms: str) -> None:
    parts = urlsplit(uri)
    try:
        port = parts.port
    except ValueError:
        raise KdtuneError(f"{flag} {shown!r}: the port must be a number in 1..65535") from None
    if not parts.hostname:
        raise KdtuneError(f"{flag} {shown!r} names no host; give {forms}")
    if port == 0:
        raise KdtuneError(f"{flag} {shown!r}: the port must be a number in 1..65535")


def _check_sqlalchemy(url: str, shown: str, flag: str, forms: str) -> None:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        parsed = make_url(url)
        parsed.get_dialect()
    except NoSuchModuleError:
        raise KdtuneError(f"{flag} {shown!r}: unknown database {url.split('://')[0]!r}; give "
                          f"{forms}") from None
    except (ArgumentError, ValueError):
        raise KdtuneError(f"{flag} {shown!r} is not a valid URL; give {forms}") from None
    except ImportError as exc:
        raise KdtuneError(f"{flag} {shown!r}: its database driver is not installed "
                          f"({exc.name or exc})") from None
    if parsed.get_backend_name() != "sqlite":
        if not parsed.host:
            raise KdtuneError(f"{flag} {shown!r} names no host; give {forms}")
        if parsed.port is not None and not 0 < parsed.port < 65536:
            raise KdtuneError(f"{flag} {shown!r}: the port must be a number in 1..65535")
    elif not parsed.database and url.rstrip("/").count("/") < 3:
        raise KdtuneError(f"{flag} {shown!r}: an SQLite database is sqlite:///PATH")


def check_reachable(uri: str, what: str, timeout: float = 5.0) -> None:
    """A one-line error unless a TCP connection to the host and port of ``uri`` opens."""
    parts = urlsplit(uri)
    if not parts.hostname:
        return
    default = {"https": 443, "http": 80}.get(parts.scheme.split("+", 1)[0], 0)
    port = parts.port or default
    if not port:
        return
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout):
            return
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise KdtuneError(f"{what} {redact(uri)} is unreachable ({reason}); start it or give "
                          "another") from None


#: Seconds a driver keeps retrying a write to a tracking server or study storage that does not
#: answer before it gives up (``KDTUNE_RETRY_S``): long enough for a server restart.
def retry_budget() -> float:
    import os

    try:
        return max(0.0, float(os.environ.get("KDTUNE_RETRY_S", "900")))
    except ValueError:
        return 900.0


def call_with_retries(fn: Callable[..., T], *args: Any, transient: Callable[[BaseException],
                      bool], what: str, budget_s: float | None = None) -> T:
    """``fn(*args)``, called again with backoff (1 s doubling to 30 s) while it raises an
    error ``transient`` accepts, for at most ``budget_s`` seconds; one line on stderr when
    ``what`` stops answering and one when it answers again."""
    budget = retry_budget() if budget_s is None else budget_s
    start, delay, told = time.monotonic(), 1.0, False
    while True:
        try:
            result = fn(*args)
        except Exception as exc:
            if not transient(exc) or time.monotonic() - start + delay > budget:
                raise
            if not told:
                cause = exc.__cause__ or exc  # a storage's wrapper: the database's own words
                reason = redact(str(cause).strip().splitlines()[0] if str(cause).strip()
                                else type(cause).__name__)
                print(f"kdtune: {what} does not answer ({reason[:200]}); retrying for up to "
                      f"{budget:.0f} s", file=sys.stderr, flush=True)
                told = True
            time.sleep(delay)
            delay = min(delay * 2, 30.0)
            continue
        if told:
            print(f"kdtune: {what} answers again after {time.monotonic() - start:.0f} s",
                  file=sys.stderr, flush=True)
        return result


def file_lock(path: Path) -> Any:
    """An exclusive lock on ``<path>.lock`` for as long as the context lasts: two drivers
    creating the same SQLite store at once create it once."""
    import fcntl

    @contextlib.contextmanager
    def held() -> Any:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_name(f".{path.name}.lock"), "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    return held()
