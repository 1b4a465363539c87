"""Fault injection with real processes, shared by ``tests/faults`` and ``benchmarks/faults.py``.

* :class:`Driver`: ``python -m kdtune ...`` as a real subprocess in its own session, with its
  own short ``RAY_TMPDIR`` (Ray's unix sockets) and its output in a file. Its local Ray
  (GCS, raylet, workers) shares its process group; :meth:`Driver.kill` SIGKILLs all of it and
  any straggler that names the temp folder, by pid; nothing else on the machine is touched.
* :class:`MlflowServer`: a real ``mlflow server`` started and stopped by
  ``cluster/local/start.sh`` / ``stop.sh`` (``KDTUNE_SERVICES=mlflow``).
* :class:`Postgres`: a real PostgreSQL server from Debian's package (``initdb`` / ``pg_ctl``
  of ``/usr/lib/postgresql/*/bin``, run as the ``postgres`` user), in a temporary folder on
  127.0.0.1 and a free port, with a password user.
* :func:`trial_faults_space`, :func:`kill_a_trial_worker`: the sweep of the trial faults (a
  trial's worker SIGKILLed, a trial whose loss diverges) and the kill, for the in-process sweep
  of ``test_trial_faults.py`` and the driver subprocess of the benchmark alike.
* :func:`check_record`: what a sweep left in MLflow and its study, held against what a sweep
  of ``num_samples`` trials must have: one child run per trial, none duplicated, every epoch
  once and none missing, the parent FINISHED.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
LOCAL = REPO / "cluster" / "local"

#: A tiny space: MLP students of 8 or 16 units on digits, distilled from a teacher given by
#: path; scheduler none, so every trial trains all its epochs.
SPACE: dict[str, Any] = {
    "name": "faults",
    "fixed": {"dataset": "digits", "model": "mlp", "epochs": 4, "batch_size": 64,
              "seeds": [0]},
    "parameters": {
        "method": {"type": "categorical", "choices": ["none", "vanilla"]},
        "alpha": {"type": "float", "low": 0.1, "high": 0.9, "when": {"method": ["vanilla"]}},
        "hidden": {"type": "categorical", "choices": [[8], [16]]},
        "lr": {"type": "logfloat", "low": 0.02, "high": 0.2},
    },
    "objective": {"metric": "val_accuracy", "mode": "max"},
    "search": {"num_samples": 4, "max_concurrent": 2, "sampler": "tpe", "seed": 3},
    "scheduler": {"type": "none"},
    "resources": {"cpus": 1, "gpus": 0},
}


def write_space(folder: Path, teacher: Path | dict[str, Any] | None, **changes: Any) -> Path:
    """:data:`SPACE` with top-level keys replaced, and the teacher (a path or a config)."""
    data = {**SPACE, **changes}
    if teacher is not None:
        data["teacher"] = {"path": str(teacher)} if isinstance(teacher, Path) else teacher
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "space.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- processes ---------------------------------------------------------------------------------
def processes_of(pgid: int, marker: str) -> list[int]:
    """Pids in process group ``pgid`` or with ``marker`` in their command line (not zombies,
    not this process)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        pid = int(entry.name)
        try:
            if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(
                errors="replace")
            if os.getpgid(pid) == pgid or marker in cmdline:
                found.append(pid)
        except (OSError, ProcessLookupError):
            continue
    return found


def kill_all(pgid: int, marker: str, timeout: float = 20) -> list[int]:
    """SIGKILL the process group and any straggler naming ``marker``; return what is left."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    left: list[int] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = processes_of(pgid, marker)
        if not left:
            return []
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.3)
    return left


def listening_addresses(pids: list[int]) -> list[str]:
    """``ip:port`` of every TCP socket the processes ``pids`` listen on (from ``ss``)."""
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=False).stdout
    wanted = {f"pid={p}," for p in pids}
    return [line.split()[3] for line in out.splitlines()
            if any(w in line for w in wanted)]


@dataclass
class Driver:
    """``python -m kdtune ARGV`` running in the background (see the module docstring)."""

    argv: list[str]
    cwd: Path
    env: dict[str, str]
    log: Path
    ray_tmp: Path
    proc: subprocess.Popen[bytes] = field(init=False)

    def __post_init__(self) -> None:
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "kdtune", *self.argv],
                                         cwd=self.cwd, env=self.env, stdout=out,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def running(self) -> bool:
        return self.proc.poll() is None

    def wait_for(self, condition: Any, timeout: float, what: str) -> None:
        """Until ``condition()`` holds; AssertionError when the driver ended or time is up."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return
            if not self.running():
                raise AssertionError(f"the driver ended before {what}:\n{self.output[-3000:]}")
            time.sleep(0.1)
        raise AssertionError(f"no {what} within {timeout:.0f} s:\n{self.output[-3000:]}")

    def finish(self, timeout: float) -> int:
        """Wait for the driver to end by itself; clean up its Ray; its exit code."""
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self.cleanup()

    def kill(self) -> None:
        """SIGKILL the driver, its Ray and every straggler; fail if anything survives."""
        left = kill_all(self.proc.pid, str(self.ray_tmp))
        self.proc.wait(timeout=10)
        assert not left, f"processes of the killed driver survived: {left}"

    def interrupt(self) -> None:
        """Ctrl-C as a terminal sends it: SIGINT to the driver's whole process group."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGINT)

    def cleanup(self) -> None:
        if self.running():
            self.proc.kill()
            self.proc.wait(timeout=10)
        kill_all(self.proc.pid, str(self.ray_tmp))


def kdtune_env(ray_tmp: Path, **extra: str) -> dict[str, str]:
    """The environment of a driver: this one's (KDTUNE_CACHE included), its own Ray temp
    folder, no cluster address, kdtune on the path."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RAY_", "MLFLOW_")) and k != "TUNE_DISABLE_SIGINT_HANDLER"}
    env["RAY_TMPDIR"] = str(ray_tmp)
    (ray_tmp / "tmp").mkdir(exist_ok=True)
    env["TMPDIR"] = str(ray_tmp / "tmp")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH"))
                                        if p)
    env.update(extra)
    return env


@contextlib.contextmanager
def ray_temp() -> Iterator[Path]:
    """A short temp folder for Ray (unix socket paths must stay under ~107 characters)."""
    path = Path(tempfile.mkdtemp(prefix="kdf", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# -- a trial's faults -------------------------------------------------------------------------
#: A learning rate that trains, and one whose loss diverges (the trial fails by itself).
GOOD_LR, DIVERGING_LR = 0.05, 1000.0


def trial_faults_space(folder: Path, teacher: Path | dict[str, Any] | None, name: str,
                       epochs: int) -> Path:
    """A grid sweep of 3 trials, 2 at a time: MLP (16,) students without distillation,
    ``epochs`` epochs of batches of 16 (long enough to be killed mid-run), learning rates
    :data:`GOOD_LR`, 0.08 and :data:`DIVERGING_LR`; a trial whose worker dies continues from
    its checkpoint twice at most."""
    return write_space(
        folder, teacher, name=name,
        fixed={"dataset": "digits", "model": "mlp", "epochs": epochs, "batch_size": 16,
               "method": "none", "hidden": [16], "seeds": [0]},
        parameters={"lr": {"type": "categorical", "choices": [GOOD_LR, 0.08, DIVERGING_LR]}},
        search={"num_samples": 3, "max_concurrent": 2, "sampler": "grid", "seed": 0},
        resources={"cpus": 1, "gpus": 0, "max_retries": 2})


def results_of(storage: Path) -> dict[str, list[dict[str, Any]]]:
    """Each trial folder's results as Ray's JSON logger wrote them, in order (a line being
    written ends them)."""
    out = {}
    for path in storage.glob("*/trial_*/result.json"):
        rows = []
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                break
        out[path.parent.name] = rows
    return out


def is_ray_worker(pid: int) -> bool:
    try:
        return b"ray::" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def kill_a_trial_worker(storage: Path, lr: float, epochs: int) -> dict[str, Any] | None:
    """One look at the results under ``storage``: the worker of the trial of learning rate
    ``lr``, once it has reported epoch 3 and before its last, SIGKILLed (by the pid its
    results carry, which must be a Ray worker's); ``folder``, ``pid`` and ``epoch`` of the
    kill, or None when no such trial runs yet."""
    for folder, rows in results_of(storage).items():
        if rows and rows[-1]["config"]["lr"] == lr and 3 <= rows[-1].get("epoch", 0) < epochs:
            pid = int(rows[-1]["pid"])
            assert is_ray_worker(pid), f"pid {pid} of {folder} is not a Ray worker"
            os.kill(pid, signal.SIGKILL)
            return {"folder": folder, "pid": pid, "epoch": rows[-1]["epoch"]}
    return None


def _trial_runs(uri: str, name: str) -> Any:
    """The Tracker and the trial runs of sweep ``name`` so far; None before they exist."""
    from kdtune.tracking import Tracker

    tracker = Tracker(uri)
    try:
        if tracker.find_sweep(name) is None:
            return None
        return tracker, tracker.trial_runs(name)
    except Exception:  # the store is being created
        return None


def epochs_logged(uri: str, name: str) -> int:
    """Epochs logged so far by every trial of sweep ``name`` (0 before it exists)."""
    found = _trial_runs(uri, name)
    if found is None:
        return 0
    tracker, runs = found
    return sum(len(tracker.client.get_metric_history(r, "val_accuracy"))
               for r in runs["run_id"])


def trials_ended(uri: str, name: str) -> int:
    """Trials of sweep ``name`` that ended (finished, stopped early or failed) so far."""
    found = _trial_runs(uri, name)
    return 0 if found is None else int(
        found[1]["status"].isin(["FINISHED", "KILLED", "FAILED"]).sum())


# -- servers -----------------------------------------------------------------------------------
@dataclass
class MlflowServer:
    """A real ``mlflow server`` of ``cluster/local`` on 127.0.0.1 (its data stays in ``dir``
    across a stop and a start)."""

    dir: Path
    port: int = field(default_factory=free_port)

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _script(self, name: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("RAY_", "MLFLOW_", "KDTUNE_")) or k == "KDTUNE_CACHE"}
        env.update({"KDTUNE_CLUSTER_DIR": str(self.dir), "KDTUNE_SERVICES": "mlflow",
                    "KDTUNE_MLFLOW_PORT": str(self.port), "KDTUNE_PYTHON": sys.executable,
                    "KDTUNE_RAY_PORT": str(free_port()), "KDTUNE_START_TIMEOUT": "180"})
        return subprocess.run(["bash", str(LOCAL / name)], env=env, capture_output=True,
                              text=True, timeout=240, stdin=subprocess.DEVNULL, check=False)

    def start(self) -> None:
        done = self._script("start.sh")
        assert done.returncode == 0, f"start.sh failed:\n{done.stderr[-3000:]}"

    def stop(self) -> None:
        done = self._script("stop.sh")
        assert done.returncode == 0, f"stop.sh failed:\n{done.stderr[-3000:]}"


@contextlib.contextmanager
def postgres_dir() -> Iterator[Path]:
    """A folder for a PostgreSQL server: short (its unix socket lives there) and outside
    pytest's private temp folders (the ``postgres`` user must reach it)."""
    path = Path(tempfile.mkdtemp(prefix="kdpg", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def postgres_bin() -> Path | None:
    """The folder of Debian's PostgreSQL server programs, if the package is installed."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    return found[-1].parent if found else None


@dataclass
class Postgres:
    """A real PostgreSQL server in ``dir`` on 127.0.0.1:``port`` with database ``kdtune`` and
    user ``kd`` (password ``password``). The server refuses to run as root, so its programs
    run as the ``postgres`` user that Debian's package creates; ``dir`` must be a short path
    that user reaches (:func:`postgres_dir`)."""

    dir: Path
    password: str = "pg-s3cret"
    port: int = field(default_factory=free_port)

    @property
    def url(self) -> str:
        return f"postgresql://kd:{self.password}@127.0.0.1:{self.port}/kdtune"

    def _run(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        binary = postgres_bin()
        assert binary is not None, "Debian's postgresql package is not installed"
        command = [str(binary / argv[0]), *argv[1:]]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                              check=False, stdin=subprocess.DEVNULL, cwd="/")

    def init(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        pwfile = self.dir / "pw"
        pwfile.write_text(self.password + "\n")
        data = self.dir / "data"
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            for path in (self.dir, pwfile):
                os.chown(path, user.pw_uid, user.pw_gid)
        done = self._run("initdb", "-D", str(data), "-U", "kd", f"--pwfile={pwfile}",
                         "--auth-host=scram-sha-256", "--auth-local=trust", "-E", "UTF8")
        assert done.returncode == 0, done.stderr[-2000:]
        pwfile.unlink()
        self.start()
        # over the unix socket in the server's folder (local connections are trusted)
        done = self._run("createdb", "-h", str(self.dir), "-p", str(self.port), "-U", "kd",
                         "kdtune")
        assert done.returncode == 0, done.stderr[-2000:]

    def start(self) -> None:
        done = self._run("pg_ctl", "-D", str(self.dir / "data"), "-l", str(self.dir / "pg.log"),
                         "-w", "-t", "60", "-o",
                         f"-c listen_addresses=127.0.0.1 -c port={self.port} "
                         f"-c unix_socket_directories={self.dir}", "start")
        assert done.returncode == 0, done.stderr[-2000:] + self.log()

    def stop(self) -> None:
        done = self._run("pg_ctl", "-D", str(self.dir / "data"), "-m", "fast", "-w", "stop")
        assert done.returncode == 0, done.stderr[-2000:] + self.log()

    def close(self) -> None:
        """Stop the server if it runs (clean-up after a failure)."""
        if (self.dir / "data" / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.dir / "data"), "-m", "immediate", "-w", "stop")

    def log(self) -> str:
        path = self.dir / "pg.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""


# -- the record --------------------------------------------------------------------------------
@dataclass
class Verdict:
    """What a sweep's record holds against what it must hold."""

    runs: int
    lost: int  # trials of num_samples that have no ended child run
    duplicated: int  # child runs beyond one per trial, and epochs logged twice
    gaps: int  # epochs missing from a run's history
    problems: list[str]

    @property
    def survived(self) -> bool:
        return not self.problems


def check_record(uri: str, study_url: str, name: str, num_samples: int, epochs: int
                 ) -> Verdict:
    """Hold sweep ``name``'s MLflow record and study against a finished sweep of
    ``num_samples`` trials of ``epochs`` epochs (scheduler none: every trial trains them all,
    or fails by itself)."""
    from kdtune.tracking import Tracker
    from kdtune.tune.study import SweepStudy

    tracker = Tracker(uri)
    problems: list[str] = []
    if tracker.find_sweep(name) is None:
        return Verdict(0, num_samples, 0, 0, [f"no sweep {name!r}"])
    parent = tracker.sweep_run(name)
    if parent.info.status != "FINISHED":
        problems.append(f"parent run {parent.info.status}")
    runs = tracker.trial_runs(name)
    ended = runs[runs["status"].isin(["FINISHED", "KILLED", "FAILED"])]
    duplicated = len(runs) - runs["trial_id"].nunique()
    lost = max(0, num_samples - ended["trial_id"].nunique())
    gaps = 0
    for _, row in runs.iterrows():
        steps = [m.step for m in tracker.client.get_metric_history(row["run_id"],
                                                                    "val_accuracy")]
        duplicated += len(steps) - len(set(steps))
        if row["status"] == "FINISHED":
            gaps += len(set(range(1, epochs + 1)) - set(steps))
            if "metrics.flops" not in row or row["metrics.flops"] != row["metrics.flops"]:
                problems.append(f"trial {row['trial_id']} has no final metrics")
        elif steps and sorted(set(steps)) != list(range(1, max(steps) + 1)):
            gaps += max(steps) - len(set(steps))
    if len(runs) != num_samples:
        problems.append(f"{len(runs)} child runs for {num_samples} trials")
    teacher = runs.get("metrics.teacher_latency_ms_b256")
    if teacher is not None and teacher.nunique() > 1:  # a resumed driver re-measured it
        problems.append(f"{teacher.nunique()} teacher latencies across the trials")
    if duplicated:
        problems.append(f"{duplicated} duplicated runs or epochs")
    if lost:
        problems.append(f"{lost} trials without an ended run")
    if gaps:
        problems.append(f"{gaps} epochs missing")
    study = SweepStudy(study_url, name)
    trials = study.sweep_trials()
    if set(trials) != set(runs["trial_id"]):
        problems.append("the study's trials are not MLflow's")
    if any(not t.state.is_finished() for t in trials.values()):
        problems.append("the study has unfinished trials")
    return Verdict(len(runs), lost, duplicated, gaps, problems)
