"""The sweep's search state: one Optuna study in an Optuna storage, the source of truth for what
was proposed, pruned and finished.

The storage is an RDB (``sqlite:///...`` beside the MLflow store by default, any SQLAlchemy URL
such as ``postgresql://...`` on a cluster) or, given a file path, Optuna's journal file storage
on a shared filesystem. Only the driver talks to it. The study holds the sweep's settings as
study attributes, one Optuna trial per Ray trial (user attribute ``ray_trial_id``), each
epoch's objective as an intermediate value, and every early-stopping decision with the values
it was made on (user attributes ``rung_<milestone>``), so a resumed sweep reads everything back
from here: Ray pickles only the storage URL and the study name (:class:`SweepStudy`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdtune.errors import KdtuneError

if TYPE_CHECKING:
    import optuna
    from optuna.storages import BaseStorage
    from optuna.trial import FrozenTrial

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


def default_study_url(store_root: Path) -> str:
    """The default study storage: ``optuna.db`` (SQLite) in the local store folder."""
    return f"sqlite:///{Path(store_root).resolve() / STUDY_FILENAME}"


def public_url(url: str) -> str:
    """``url`` without the password (``user:secret@host`` -> ``user:***@host``)."""
    return re.sub(r"(?<=://)([^:/@]+):[^@/]*@", r"\1:***@", url)


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
        return optuna.storages.RDBStorage(url, engine_kwargs=_engine_kwargs(url))
    except Exception as exc:  # SQLAlchemy's errors: an unknown dialect, no server, ...
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise KdtuneError(f"study storage {public_url(url)}: cannot open it: {reason}; give an "
                          "SQLAlchemy URL (sqlite:///PATH, postgresql://USER@HOST/DB) or a "
                          "journal file path") from None


def _engine_kwargs(url: str) -> dict[str, Any]:
    if url.startswith("sqlite:"):
        return {"connect_args": {"timeout": 60}}  # the driver's threads share the file
    return {}


class SweepStudy:
    """A handle on a sweep's study; pickles as its storage URL and study name alone."""

    def __init__(self, url: str, name: str) -> None:
        self.url, self.name = url, name
        self._storage: BaseStorage | None = None
        self._study: optuna.Study | None = None
        self._study_id: int | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url, "name": self.name}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["url"], state["name"])

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
                raise KdtuneError(f"no study {self.name!r} in {public_url(self.url)}; pass "
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
                              f"{public_url(self.url)}; choose another --name") from None
        for key, value in attrs.items():
            self._study.set_user_attr(key, value)

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
