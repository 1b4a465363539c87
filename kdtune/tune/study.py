"""The sweep's search state: one Optuna study in an Optuna storage, the source of truth for what
was proposed, pruned and finished.

The storage is an RDB (``sqlite:///...`` beside the MLflow store by default, any SQLAlchemy URL
such as ``postgresql://...`` on a cluster) or, given a file path, Optuna's journal file storage
on a shared filesystem. Only the driver talks to it. The study holds the sweep's settings as
study attributes, one Optuna trial per Ray trial (user attribute ``ray_trial_id``), each
epoch's objective as an intermediate value, and every early-stopping decision with the values
it was made on (user attributes ``rung_<milestone>``), so a resumed sweep reads everything back
from here: Ray pickles only the storage URL and the study name (:class:`SweepStudy`). The
same storage holds the lock that lets one driver at a time run a sweep (:class:`DriverLock`).
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdtune.errors import KdtuneError
from kdtune.urls import (
    call_with_retries,
    file_lock,
    recall,
    redact,
    remember,
    sqlalchemy_url,
)
from kdtune.vocabulary import TAG_STUDY

if TYPE_CHECKING:
    import optuna
    from optuna.storages import BaseStorage
    from optuna.trial import FrozenTrial

    from kdtune.tune.space import SearchSpace

STUDY_FILENAME = "optuna.db"
#: User attribute of an Optuna trial: the Ray trial it is.
ATTR_RAY_ID = "ray_trial_id"
#: User attribute of an Optuna trial given up (told FAIL) and asked again as a new trial: the
#: Ray trial it belonged to never reached Ray's snapshot before the driver died.
ATTR_REASKED = "reasked_after_resume"
#: User attribute of a proposal that repeated a configuration already trained (told FAIL).
ATTR_REPEAT_OF = "repeat_of"
#: Prefix of the user attributes holding a trial's early-stopping decisions, one per rung.
ATTR_RUNG = "rung_"
#: Study attributes: the sweep's search settings (``searcher.search_attrs``).
ATTR_SPACE, ATTR_SPACE_SHA = "space_file", "space_sha256"
ATTR_NUM_SAMPLES, ATTR_MAX_CONCURRENT = "num_samples", "max_concurrent"
ATTR_SAMPLER, ATTR_SEED = "sampler", "seed"


def study_of_sweep(name: str, tags: Mapping[str, str], study_storage: str | None = None
                   ) -> SweepStudy:
    """The study of sweep ``name``: at ``study_storage``, else where its parent run's ``tags``
    say it is; a one-line error when there is none."""
    url = study_storage or tags.get(TAG_STUDY)
    if url is None:
        raise KdtuneError(f"sweep {name!r} was started by an older kdtune and has no Optuna "
                          "study (it cannot be resumed); start it again with `kdtune search`")
    if "***" in url:
        raise KdtuneError(f"sweep {name!r} keeps its study at {url}; pass --study-storage "
                          "with the credentials")
    study = SweepStudy(url, name)
    if not study.exists():  # connects: an unreachable server is one line too
        raise KdtuneError(f"no study {name!r} in {redact(url)}; pass --study-storage with "
                          "the storage the sweep was started with")
    return study


def load_unchanged_space(source: str, sha256: str, sweep: str) -> SearchSpace:
    """The space file sweep ``sweep`` was started with (``source``, recorded with its
    ``sha256``), read again; a one-line error when it changed since."""
    from kdtune.tune.space import load_space

    space = load_space(source)
    if space.sha256 != sha256:
        raise KdtuneError(f"{space.source} changed since sweep {sweep!r} started (sha256 "
                          f"{sha256[:12]} -> {space.sha256[:12]}); restore it")
    return space


def default_study_url(store_root: Path) -> str:
    """The default study storage: ``optuna.db`` (SQLite) in the local store folder."""
    return f"sqlite:///{Path(store_root).resolve() / STUDY_FILENAME}"


def is_server(url: str) -> bool:
    """Whether the study storage is a database server (not an SQLite file or a journal)."""
    return "://" in url and not url.startswith("sqlite")


def open_storage(url: str) -> BaseStorage:
    """An Optuna storage: an RDB for a SQLAlchemy URL, the journal file storage for a path.

    A malformed URL or an unreachable database is a one-line error.
    """
    import optuna

    if "://" not in url:
        from optuna.storages.journal import JournalFileBackend

        path = Path(url).expanduser().resolve()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
        except OSError as exc:
            raise KdtuneError(f"study storage {url}: cannot use it: {exc.strerror}") from None
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///").split("?", 1)[0]).parent.mkdir(parents=True,
                                                                           exist_ok=True)
    try:
        if url.startswith("sqlite:///"):
            with file_lock(Path(url.removeprefix("sqlite:///").split("?", 1)[0])):
                return optuna.storages.RDBStorage(url, engine_kwargs=_engine_kwargs(url))
        return retrying_storage(optuna.storages.RDBStorage(
            sqlalchemy_url(url), engine_kwargs=_engine_kwargs(url)), redact(url))
    except Exception as exc:  # SQLAlchemy's errors: an unknown dialect, no server, ...
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise KdtuneError(f"study storage {redact(url)}: cannot open it: "
                          f"{redact(reason)}; give an SQLAlchemy URL (sqlite:///PATH, "
                          "postgresql://USER@HOST/DB) or a journal file path") from None


def transient_db_error(exc: BaseException) -> bool:
    """A lost or refused connection to a database server (worth retrying), not bad data."""
    import optuna
    from sqlalchemy import exc as sa

    if isinstance(exc, optuna.exceptions.StorageInternalError) and exc.__cause__ is not None:
        exc = exc.__cause__
    if isinstance(exc, sa.DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, sa.OperationalError | sa.InterfaceError | sa.DisconnectionError)


def retrying_storage(inner: BaseStorage, what: str) -> BaseStorage:
    """``inner`` (an RDB storage on a server) behind retries: each call of the storage API waits
    and retries while the server does not answer, so a server restarting for a minute makes the
    driver wait instead of failing the sweep."""
    import inspect

    from optuna.storages import BaseStorage

    def retried(method: str) -> Any:
        return lambda self, *args, **kwargs: call_with_retries(
            lambda: getattr(inner, method)(*args, **kwargs), transient=transient_db_error,
            what=f"the study storage {what}")

    api = [n for n, _ in inspect.getmembers(BaseStorage, inspect.isfunction) if n[0] != "_"]
    return type("RetryingStorage", (BaseStorage,), {m: retried(m) for m in api})()


def _engine_kwargs(url: str) -> dict[str, Any]:
    if url.startswith("sqlite:"):
        return {"connect_args": {"timeout": 60}}  # the driver's threads share the file
    kwargs: dict[str, Any] = {"pool_pre_ping": True}  # a restarted server: connect again
    if url.startswith("postgresql"):
        kwargs["connect_args"] = {"connect_timeout": 10}
    return kwargs


class SweepStudy:
    """A handle on a sweep's study; pickles as its storage URL and study name alone."""

    def __init__(self, url: str, name: str) -> None:
        self.url, self.name = remember(url), name
        self._storage: BaseStorage | None = None
        self._study: optuna.Study | None = None
        self._study_id: int | None = None

    def __getstate__(self) -> dict[str, Any]:  # no password in Ray's experiment state
        return {"url": redact(self.url), "name": self.name}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(recall(state["url"]), state["name"])

    # -- opening ---------------------------------------------------------------------------
    @property
    def storage(self) -> BaseStorage:
        if self._storage is None:
            import optuna

            optuna.logging.set_verbosity(optuna.logging.WARNING)  # no line per new study
            self._storage = open_storage(self.url)
        return self._storage

    @property
    def study(self) -> optuna.Study:
        if self._study is None:
            import optuna

            try:
                self._study = optuna.load_study(study_name=self.name, storage=self.storage)
            except KeyError:
                raise KdtuneError(f"no study {self.name!r} in {redact(self.url)}; pass "
                                  "--study-storage with the storage the sweep was started "
                                  "with") from None
        return self._study

    def exists(self) -> bool:
        """Whether the storage holds a study of this name."""
        return any(s.study_name == self.name for s in self.storage.get_all_studies())

    def create(self, directions: list[str], attrs: Mapping[str, Any]) -> None:
        """Create the study (it must not exist) with the sweep's settings as attributes."""
        import optuna

        try:
            self._study = optuna.create_study(
                study_name=self.name, storage=self.storage,
                directions=["maximize" if d == "max" else "minimize" for d in directions])
        except optuna.exceptions.DuplicatedStudyError:
            raise KdtuneError(f"a study named {self.name!r} already exists in "
                              f"{redact(self.url)}; choose another --name") from None
        for key, value in attrs.items():
            self._study.set_user_attr(key, value)

    def delete(self) -> None:
        """Delete the study (one left without a sweep by a driver killed while registering)."""
        self.storage.delete_study(self.storage.get_study_id_from_name(self.name))
        self._study = self._study_id = None

    # -- reading ---------------------------------------------------------------------------
    @property
    def attrs(self) -> dict[str, Any]:
        return self.study.user_attrs

    def set_attr(self, key: str, value: Any) -> None:
        self.study.set_user_attr(key, value)

    def trials(self) -> list[FrozenTrial]:
        return self.study.get_trials(deepcopy=False)

    def sweep_trials(self) -> dict[str, FrozenTrial]:
        """Ray trial id -> Optuna trial, for every trial of the sweep (not the proposals told
        FAIL as repeats, nor trials asked again after a resume)."""
        return {t.user_attrs[ATTR_RAY_ID]: t for t in self.trials()
                if ATTR_RAY_ID in t.user_attrs and ATTR_REASKED not in t.user_attrs}

    # -- writing one trial -------------------------------------------------------------------
    def _storage_id(self, number: int) -> int:
        if self._study_id is None:
            self._study_id = self.storage.get_study_id_from_name(self.name)
        return self.storage.get_trial_id_from_study_id_trial_number(self._study_id, number)

    def set_trial_attr(self, number: int, key: str, value: Any) -> None:
        self.storage.set_trial_user_attr(self._storage_id(number), key, value)

    def report(self, number: int, step: int, value: float) -> None:
        """Record ``value`` as trial ``number``'s intermediate value at ``step``."""
        self.storage.set_trial_intermediate_value(self._storage_id(number), step, value)

    def trial(self, number: int) -> FrozenTrial:
        return self.storage.get_trial(self._storage_id(number))


#: Suffix of the study that marks a sweep as being run by a driver (:class:`DriverLock`).
LOCK_SUFFIX = "/driver"
#: Seconds between a driver's heartbeats on its lock; a lock whose driver runs on another
#: machine is taken as abandoned after :data:`LOCK_STALE_S` without one.
LOCK_HEARTBEAT_S, LOCK_STALE_S = 20.0, 90.0


class SweepBusy(KdtuneError):
    """Another live driver runs the sweep."""


class DriverLock:
    """One driver at a time per sweep: an Optuna study named ``<sweep>/driver`` in the sweep's
    study storage, created (an atomic operation of every Optuna storage) by the driver that
    runs the sweep and deleted when it ends.

    It holds the driver's host, pid and the start time of that process, and a heartbeat the
    driver renews every :data:`LOCK_HEARTBEAT_S` seconds. A lock whose driver is gone (same
    host and that process no longer runs, or no heartbeat for :data:`LOCK_STALE_S` seconds) is
    taken over; a live one makes :meth:`acquire` raise :class:`SweepBusy`.
    """

    def __init__(self, study: SweepStudy) -> None:
        self.study = study
        self.name = study.name + LOCK_SUFFIX
        self.lock_id: int | None = None
        self._stop = threading.Event()

    def acquire(self) -> None:
        import optuna
        from optuna.study import StudyDirection

        storage = self.study.storage
        me = {"host": socket.gethostname(), "pid": os.getpid(), "started": _process_start(),
              "heartbeat": time.time()}
        for _ in range(20):
            try:
                lock_id = storage.create_new_study([StudyDirection.MINIMIZE], self.name)
            except optuna.exceptions.DuplicatedStudyError:
                self._clear_abandoned(storage)
                continue
            storage.set_study_user_attr(lock_id, "driver", me)
            self.lock_id = lock_id
            thread = threading.Thread(target=self._beat, name="kdtune-lock", daemon=True)
            thread.start()
            return
        raise SweepBusy(f"sweep {self.study.name!r}: could not take its driver lock")

    def held(self) -> bool:
        """Whether a live driver holds the lock now (nothing is taken or cleared)."""
        storage = self.study.storage
        try:
            holder = storage.get_study_user_attrs(storage.get_study_id_from_name(self.name)
                                                  ).get("driver")
        except KeyError:
            return False
        return holder is None or _alive(holder)  # (None: being taken at this moment)

    def _clear_abandoned(self, storage: BaseStorage) -> None:
        """Delete the lock if its driver is gone; raise :class:`SweepBusy` if it runs."""
        try:
            lock_id = storage.get_study_id_from_name(self.name)
            holder = storage.get_study_user_attrs(lock_id).get("driver")
        except KeyError:  # released meanwhile
            return
        if holder is None:  # just created by another driver, which sets its attributes next
            time.sleep(2)
            try:
                holder = storage.get_study_user_attrs(lock_id).get("driver")
            except KeyError:
                return
            if holder is None:  # a driver killed between the two steps
                self._delete(storage, lock_id)
                return
        if _alive(holder):
            since = time.strftime("%H:%M:%S", time.localtime(holder.get("heartbeat", 0)))
            raise SweepBusy(f"sweep {self.study.name!r} is being run by another kdtune (pid "
                            f"{holder.get('pid')} on {holder.get('host')}, alive at {since}); "
                            "wait for it to end, or stop it (Ctrl-C) and resume then")
        self._delete(storage, lock_id)

    @staticmethod
    def _delete(storage: BaseStorage, lock_id: int) -> None:
        with contextlib.suppress(KeyError):  # another driver deleted it first
            storage.delete_study(lock_id)

    def _beat(self) -> None:
        while not self._stop.wait(LOCK_HEARTBEAT_S):
            try:
                holder = {**self.study.storage.get_study_user_attrs(self.lock_id)["driver"],
                          "heartbeat": time.time()}
                self.study.storage.set_study_user_attr(self.lock_id, "driver", holder)
            except Exception:  # the storage is away for a while: the next beat tries again
                continue

    def release(self) -> None:
        self._stop.set()
        if self.lock_id is None:
            return
        # gone or unreachable: the next driver finds this process gone
        with contextlib.suppress(Exception):
            self.study.storage.delete_study(self.lock_id)
        self.lock_id = None


def _process_start(pid: int | None = None) -> str:
    """When process ``pid`` started (a pid reused by another process has another start)."""
    try:
        stat = Path(f"/proc/{pid or os.getpid()}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _alive(holder: Mapping[str, Any]) -> bool:
    """Whether the driver that holds a lock still runs."""
    if holder.get("host") == socket.gethostname():
        pid = int(holder.get("pid", 0))
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        started = _process_start(pid)
        return not started or not holder.get("started") or started == holder["started"]
    return time.time() - float(holder.get("heartbeat", 0)) < LOCK_STALE_S
