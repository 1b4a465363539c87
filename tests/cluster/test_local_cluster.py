"""The 2-node local cluster, for real: ``cluster/local/start.sh`` starts a Ray head and a second
Ray node (``ray start --address``) plus an ``mlflow server`` on 127.0.0.1; ``kdtune search``
joins it as a subprocess with ``--address`` and ``--mlflow-uri http://...``; the test then
reads everything back through the MLflow server and ``stop.sh`` stops exactly what
``start.sh`` started.

The cluster has its own temp dirs, ports, auth token and process sessions, so it never meets
the session's in-process Ray (tests/tune/conftest.py) or another Ray on the machine; every
subprocess reaches it only through the explicit ``--address``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

pytest.importorskip("ray")
pytest.importorskip("mlflow")
psutil = pytest.importorskip("psutil")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
LOCAL = REPO / "cluster" / "local"
SWEEP = "cluster_digits"
LOOPBACK = {"127.0.0.1", "::ffff:127.0.0.1", "::1"}

#: 4 trials, 1 CPU each, max 2 at a time on a cluster of 2 one-CPU nodes: both nodes must
#: run trials. Tiny MLP students (8-16 units, 3 epochs) of an MLP (64,) teacher (5 epochs).
SPACE = {
    "name": SWEEP,
    "fixed": {"dataset": "digits", "model": "mlp", "epochs": 3, "batch_size": 64,
              "seeds": [0]},
    "teacher": {"model": "mlp", "hidden": [64], "epochs": 5, "lr": 0.05},
    "parameters": {
        "method": {"type": "categorical", "choices": ["none", "vanilla"]},
        "alpha": {"type": "float", "low": 0.1, "high": 0.9, "when": {"method": ["vanilla"]}},
        "temperature": {"type": "categorical", "choices": [2, 4],
                        "when": {"method": ["vanilla"]}},
        "hidden": {"type": "categorical", "choices": [[8], [12], [16]]},
    },
    "objective": {"metric": "val_accuracy", "mode": "max"},
    "search": {"num_samples": 4, "max_concurrent": 2, "sampler": "random", "seed": 0},
    "scheduler": {"type": "none"},
    "resources": {"cpus": 1, "gpus": 0},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_free(port: int) -> bool:
    """Nobody listens on ``port`` and a server could bind it again (TIME_WAIT is fine)."""
    if any(c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN
           for c in psutil.net_connections(kind="inet")):
        return False
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` / ``export KEY=VALUE`` lines written by start.sh (shell-quoted)."""
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        words = shlex.split(line)
        if words[0] == "export":
            words = words[1:]
        key, _, value = words[0].partition("=")
        out[key] = value
    return out


def session_members(sid: int) -> list[psutil.Process]:
    members = []
    for proc in psutil.process_iter():
        try:
            if os.getsid(proc.pid) == sid:
                members.append(proc)
        except (OSError, psutil.Error):
            pass
    return members


def processes_mentioning(*markers: str) -> list[str]:
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            cmd = " ".join(proc.info["cmdline"] or [])
        except psutil.Error:
            continue
        if any(m in cmd for m in markers):
            found.append(f"{proc.info['pid']}: {cmd[:200]}")
    return found


@dataclass
class Cluster:
    dir: Path  # KDTUNE_CLUSTER_DIR
    ray_tmp: Path
    ray_port: int
    mlflow_port: int
    env: dict[str, str]  # environment for scripts and drivers (includes env.sh)
    state: dict[str, str]  # state.env as start.sh wrote it

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.ray_port}"

    @property
    def mlflow_uri(self) -> str:
        return f"http://127.0.0.1:{self.mlflow_port}"

    @property
    def sessions(self) -> list[int]:
        return [int(self.state[k]) for k in ("RAY_HEAD_PID", "RAY_NODE2_PID", "MLFLOW_PID")]

    def script(self, name: str, timeout: float = 400) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", str(LOCAL / name)], env=self.env, capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False)

    def logs(self) -> str:
        parts = []
        for log in sorted((self.dir / "logs").glob("*")):
            lines = log.read_text(errors="replace").splitlines()[-40:]
            parts.append(f"--- {log.name}\n" + "\n".join(lines))
        return "\n".join(parts)


@pytest.fixture
def local_cluster(tmp_path: Path) -> Iterator[Cluster]:
    # Ray puts unix sockets under its temp dir: keep that path short (tmp_path is long).
    ray_tmp = Path(tempfile.mkdtemp(prefix="kdc-", dir="/tmp"))
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RAY_", "MLFLOW_", "KDTUNE_")) or k == "KDTUNE_CACHE"}
    ray_port, mlflow_port = free_port(), free_port()
    env.update({
        "KDTUNE_CLUSTER_DIR": str(tmp_path / "cluster"), "KDTUNE_RAY_TMP": str(ray_tmp),
        "KDTUNE_RAY_PORT": str(ray_port), "KDTUNE_MLFLOW_PORT": str(mlflow_port),
        "KDTUNE_PYTHON": sys.executable, "KDTUNE_START_TIMEOUT": "240",
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH"))
                                      if p),
    })
    cluster = Cluster(tmp_path / "cluster", ray_tmp, ray_port, mlflow_port, env, {})
    try:
        started = time.monotonic()
        done = cluster.script("start.sh")
        assert done.returncode == 0, f"start.sh failed:\n{done.stderr}\n{cluster.logs()}"
        print(f"start.sh: {time.monotonic() - started:.1f}s")
        cluster.state = read_env_file(cluster.dir / "state.env")
        env.update(read_env_file(cluster.dir / "env.sh"))
        yield cluster
    finally:
        cluster.script("stop.sh")  # no-op when the test already stopped it
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_sweep_on_two_node_cluster_with_mlflow_server(local_cluster: Cluster,
                                                      tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    cluster = local_cluster
    env = cluster.env
    assert env["RAY_ADDRESS"] == cluster.address
    assert env["MLFLOW_TRACKING_URI"] == cluster.mlflow_uri

    # -- two alive nodes, every server on the loopback interface ---------------------------
    nodes = [ln.split()[1] for ln in (cluster.dir / "logs" / "nodes.txt").read_text()
             .splitlines() if ln.startswith("node ")]
    assert len(set(nodes)) == 2, nodes
    members = [p for sid in cluster.sessions for p in session_members(sid)]
    assert len(members) >= 6  # 2 x (ray start, raylet, agents) + gcs + mlflow ...
    listening = []
    for proc in members:
        with contextlib.suppress(psutil.Error):
            listening += [(proc.pid, c.laddr) for c in proc.net_connections(kind="inet")
                          if c.status == psutil.CONN_LISTEN]
    assert listening, "no listening sockets found"
    exposed = [(pid, addr) for pid, addr in listening if addr.ip not in LOOPBACK]
    assert not exposed, f"servers listening beyond 127.0.0.1: {exposed}"
    assert any(addr.port == cluster.ray_port for _, addr in listening)
    assert any(addr.port == cluster.mlflow_port for _, addr in listening)

    # -- the sweep, as a user runs it ------------------------------------------------------
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(SPACE, sort_keys=False))
    driver_cwd = tmp_path / "driver"
    driver_cwd.mkdir()
    storage = tmp_path / "ray-storage"
    started = time.monotonic()
    search = subprocess.run(
        [sys.executable, "-m", "kdtune", "search", str(space), "--address", cluster.address,
         "--mlflow-uri", cluster.mlflow_uri, "--storage", str(storage)],
        cwd=driver_cwd, env={**env, "KDTUNE_CACHE": str(tmp_path / "cache")},
        capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL, check=False)
    print(f"kdtune search: {time.monotonic() - started:.1f}s")
    assert search.returncode == 0, (f"kdtune search failed:\n{search.stdout[-4000:]}\n"
                                    f"{search.stderr[-4000:]}\n{cluster.logs()}")
    assert f"joining the Ray cluster at {cluster.address}" in search.stdout
    assert f"sweep {SWEEP!r} finished: 4 trials" in search.stdout

    # -- the record, read through the server -----------------------------------------------
    client = MlflowClient(tracking_uri=cluster.mlflow_uri)
    experiment = client.get_experiment_by_name("kdtune")
    assert experiment is not None
    assert experiment.artifact_location.startswith("mlflow-artifacts:")  # proxied by the server
    sweep_filter = f"tags.`kdtune.kind` = 'sweep' AND tags.`kdtune.sweep` = '{SWEEP}'"
    parents = client.search_runs([experiment.experiment_id], sweep_filter)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    assert parent.data.tags["kdtune.ray_address"] == cluster.address
    children = client.search_runs([experiment.experiment_id],
                                  f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert len(children) == 4
    assert {c.info.status for c in children} == {"FINISHED"}
    node_ids = {c.data.tags.get("kdtune.node_id") for c in children}
    assert None not in node_ids
    assert len(node_ids) == 2, f"trials ran on {node_ids}, expected both nodes"
    assert node_ids == set(nodes)

    # -- artifacts: listed through the server, stored in the server's folder ----------------
    served = cluster.dir / "mlflow" / "artifacts"
    with_student = []
    for child in children:
        names = {a.path for a in client.list_artifacts(child.info.run_id)}
        assert "config.yaml" in names, names
        folder = served / experiment.experiment_id / child.info.run_id / "artifacts"
        assert (folder / "config.yaml").is_file()
        if "student.pt" in names:
            assert (folder / "student.pt").stat().st_size > 0
            with_student.append(child)
    assert len(with_student) == 1
    top = max(c.data.metrics["val_accuracy"] for c in children)
    assert with_student[0].data.metrics["val_accuracy"] == top
    # nothing landed in a local store of the driver
    leftovers = [p.relative_to(driver_cwd) for p in driver_cwd.rglob("*")]
    assert not leftovers, f"driver's folder holds {leftovers}"
    assert not list(storage.rglob("student.pt")) and not list(storage.rglob("config.yaml"))

    # -- kdtune best answers through the server --------------------------------------------
    best = subprocess.run(
        [sys.executable, "-m", "kdtune", "best", SWEEP, "--mlflow-uri", cluster.mlflow_uri,
         "--format", "json"],
        cwd=driver_cwd, env=env, capture_output=True, text=True, timeout=300,
        stdin=subprocess.DEVNULL, check=False)
    assert best.returncode == 0, best.stderr
    rows = json.loads(best.stdout[best.stdout.index("["):])
    assert len(rows) == 4
    assert rows[0]["val_accuracy"] == top
    assert {r["run_id"] for r in rows} == {c.info.run_id for c in children}

    # -- stop.sh stops all of it -----------------------------------------------------------
    started = time.monotonic()
    stop = cluster.script("stop.sh")
    print(f"stop.sh: {time.monotonic() - started:.1f}s")
    assert stop.returncode == 0, stop.stderr
    left = [p.pid for sid in cluster.sessions for p in session_members(sid)]
    assert not left, f"processes left: {left}"
    assert not processes_mentioning(str(cluster.ray_tmp), str(cluster.dir))
    assert port_free(cluster.ray_port) and port_free(cluster.mlflow_port)
    assert not (cluster.dir / "state.env").exists()
