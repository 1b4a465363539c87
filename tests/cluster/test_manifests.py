"""Static checks of the cluster material that cannot run here (no Docker engine, Kubernetes or
cloud on the CI machines): the ``ray up`` config against the schema shipped inside Ray, the
KubeRay manifests' kinds and fields, the Dockerfiles' pins against pyproject.toml, the compose
file's services (``docker compose config`` too where that CLI exists), and the local scripts'
syntax. The local cluster itself runs for real in test_local_cluster.py.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]
IMAGE_IN_CONTAINER = "/opt/kdtune"  # WORKDIR of the kdtune images


def pin(name: str) -> str:
    """The exact version pyproject.toml pins for ``name`` (extras ignored)."""
    for dep in PYPROJECT["project"]["dependencies"]:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)(\[[^\]]*\])?==([^;\s]+)", dep.strip())
        if m and m.group(1).lower() == name.lower():
            return m.group(3)
    raise AssertionError(f"pyproject.toml pins no {name}")


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def kdtune_image(flavour: str) -> re.Pattern[str]:
    return re.compile(rf"^(?:[\w.-]+(?::\d+)?/)*kdtune:{re.escape(VERSION)}-{flavour}$")


# -- ray up (AWS) ------------------------------------------------------------------------------
RAY_UP = CLUSTER / "aws" / "ray-cluster.yaml"


@pytest.fixture(scope="module")
def ray_schema() -> dict[str, Any]:
    ray = pytest.importorskip("ray")
    path = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"
    return json.loads(path.read_text())


def test_ray_up_config_matches_rays_schema(ray_schema: dict[str, Any]) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    config = load(RAY_UP)
    jsonschema.validate(config, ray_schema)
    # the schema does reject what it should (additionalProperties is false in docker)
    broken = {**config, "docker": {**config["docker"], "imagee": "typo"}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, ray_schema)


def test_ray_up_config_passes_rays_own_checks() -> None:
    pytest.importorskip("jsonschema")
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(load(RAY_UP))  # fills Ray's AWS defaults, merges commands
    validate_config(prepared)
    assert prepared["head_node_type"] in prepared["available_node_types"]


def test_ray_up_config_cpu_head_gpu_workers_and_images() -> None:
    config = load(RAY_UP)
    assert config["provider"]["type"] == "aws"
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    gpu = [t for t in types.values() if t["resources"].get("GPU", 0) > 0]
    assert gpu and all(t["node_config"]["InstanceType"].startswith(("g5.", "g6.", "p"))
                       for t in gpu)
    assert kdtune_image("cpu").match(config["docker"]["head_image"])
    assert kdtune_image("cpu").match(config["docker"]["worker_image"])
    for t in gpu:
        assert kdtune_image("cuda").match(t["docker"]["worker_image"])
    # token auth everywhere, the token shipped to every node
    assert "--env RAY_AUTH_MODE=token" in config["docker"]["run_options"]
    assert "~/.ray/auth_token" in config["file_mounts"]
    # kdtune is installed on every node; the dashboard stays on the head's loopback
    assert any("kdtune" in c for c in config["setup_commands"])
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start and "--head" in head_start
    assert "0.0.0.0" not in RAY_UP.read_text()


# -- KubeRay -----------------------------------------------------------------------------------
KUBERAY = CLUSTER / "kuberay"


def containers(pod_template: dict[str, Any]) -> list[dict[str, Any]]:
    return pod_template["spec"]["containers"]


def check_ray_cluster_spec(spec: dict[str, Any]) -> None:
    assert spec["rayVersion"] == pin("ray") == "2.60.0"
    assert spec["authOptions"]["mode"] == "token"
    head = spec["headGroupSpec"]
    assert head.get("serviceType", "ClusterIP") == "ClusterIP"
    assert head["rayStartParams"]["num-cpus"] == "0"
    (head_c,) = containers(head["template"])
    assert kdtune_image("cpu").match(head_c["image"])
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu"}
    for name, group in groups.items():
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        (c,) = containers(group["template"])
        res = c["resources"]
        assert res["requests"] == res["limits"], f"{name}: requests != limits"
        assert kdtune_image(name if name == "cpu" else "cuda").match(c["image"])
        gpus = res["limits"].get("nvidia.com/gpu")
        assert (gpus is not None) == (name == "gpu")
    for c in [head_c] + [containers(g["template"])[0] for g in groups.values()]:
        env = {e["name"]: e.get("value") for e in c["env"]}
        assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
        assert {"cpu", "memory"} <= set(c["resources"]["limits"])


def test_raycluster_manifest() -> None:
    doc = load(KUBERAY / "raycluster.yaml")
    assert (doc["apiVersion"], doc["kind"]) == ("ray.io/v1", "RayCluster")
    check_ray_cluster_spec(doc["spec"])


def test_rayjob_runs_kdtune_search_on_the_same_cluster_spec() -> None:
    doc = load(KUBERAY / "rayjob.yaml")
    assert (doc["apiVersion"], doc["kind"]) == ("ray.io/v1", "RayJob")
    spec = doc["spec"]
    check_ray_cluster_spec(spec["rayClusterSpec"])
    assert spec["rayClusterSpec"] == load(KUBERAY / "raycluster.yaml")["spec"]  # no drift
    assert spec["shutdownAfterJobFinishes"] is True
    words = shlex.split(spec["entrypoint"])
    assert words[:2] == ["kdtune", "search"]
    entry = " ".join(words)
    assert "--address auto" in entry
    assert "--mlflow-uri http://mlflow:5000" in entry
    assert re.search(r"--storage s3://\S+", entry)
    # the flags exist, and the space file (in the image) is a valid space of this repo
    from kdtune.cli import build_parser
    from kdtune.tune.space import load_space

    args = build_parser().parse_args(words[1:])
    assert args.address == "auto" and args.storage.startswith("s3://")
    assert args.space.startswith(IMAGE_IN_CONTAINER + "/")
    load_space(str(REPO / Path(args.space).relative_to(IMAGE_IN_CONTAINER)))


def test_kubernetes_mlflow_service_matches_the_tracking_uri() -> None:
    docs = {d["kind"]: d for d in yaml.safe_load_all((KUBERAY / "mlflow.yaml").read_text())}
    assert set(docs) == {"Deployment", "Service"}
    service = docs["Service"]
    assert service["metadata"]["name"] == "mlflow"
    assert service["spec"]["type"] == "ClusterIP"
    assert [p["port"] for p in service["spec"]["ports"]] == [5000]
    (c,) = containers(docs["Deployment"]["spec"]["template"])
    assert c["image"].endswith(f"/kdtune-mlflow:{pin('mlflow')}")
    command = " ".join(c["args"])
    for flag in ("--serve-artifacts", "--artifacts-destination", "--backend-store-uri",
                 "--port 5000"):
        assert flag in command
    allowed = {e["name"]: e["value"] for e in c["env"]}["MLFLOW_SERVER_ALLOWED_HOSTS"]
    assert "mlflow:*" in allowed.split(",")


# -- images --------------------------------------------------------------------------------
DOCKERFILES = {"cpu": CLUSTER / "docker" / "Dockerfile",
               "cuda": CLUSTER / "docker" / "Dockerfile.cuda"}


def dockerfile_args(text: str) -> dict[str, str]:
    return dict(re.findall(r"^ARG\s+(\w+)=(\S+)\s*$", text, flags=re.M))


@pytest.mark.parametrize("flavour", sorted(DOCKERFILES))
def test_dockerfile_pins_and_builds_from_repo_root(flavour: str) -> None:
    path = DOCKERFILES[flavour]
    text = path.read_text()
    args = dockerfile_args(text)
    assert args["TORCH_VERSION"] == pin("torch")
    assert args["TORCHVISION_VERSION"] == pin("torchvision")
    assert args["RAY_VERSION"] == pin("ray")
    index = args["TORCH_INDEX_URL"]
    assert index.startswith("https://download.pytorch.org/whl/")
    assert (index.rsplit("/", 1)[1] == "cpu") == (flavour == "cpu")
    assert re.search(r"^FROM python:3\.1[12]-slim\s*$", text, flags=re.M)
    assert re.search(r"pip install \.", text)
    # every COPY source exists relative to the repository root (the build context) and is
    # let through by the Dockerfile's own ignore file (BuildKit: <Dockerfile>.dockerignore)
    ignore = Path(str(path) + ".dockerignore").read_text().splitlines()
    assert "*" in ignore
    for line in re.findall(r"^COPY\s+(.+)$", text, flags=re.M):
        *sources, _dest = line.split()
        for src in sources:
            assert (REPO / src).exists(), f"{path.name}: COPY {src} is not in the repo root"
            assert f"!{src}" in ignore, f"{path.name}.dockerignore drops {src}"


def test_mlflow_image_pins_mlflow() -> None:
    args = dockerfile_args((CLUSTER / "mlflow" / "Dockerfile").read_text())
    assert args["MLFLOW_VERSION"] == pin("mlflow")


# -- MLflow compose stack -------------------------------------------------------------------
COMPOSE = CLUSTER / "mlflow" / "docker-compose.yaml"
ENV_EXAMPLE = CLUSTER / "mlflow" / ".env.example"


def env_example() -> dict[str, str]:
    out = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose-style ``${VAR}``, ``${VAR:-default}``, ``${VAR:?error}`` and ``$$``."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m.group(1), m.group(2), m.group(3)
        if env.get(name):
            return env[name]
        if op == ":-":
            return arg
        raise AssertionError(f"{name} is used in the compose file but not set in .env.example")

    return re.sub(r"\$\$|\$\{(\w+)(?:(:-|:\?)([^}]*))?\}", sub, value)


def test_compose_services_and_fields() -> None:
    raw = load(COMPOSE)
    env = env_example()
    compose = interpolate(raw, env)
    services = compose["services"]
    assert set(services) == {"postgres", "minio", "create-bucket", "mlflow"}
    mlflow = services["mlflow"]
    cmd = " ".join(mlflow["command"])
    assert cmd.startswith("mlflow server")
    assert f"--backend-store-uri postgresql+psycopg2://{env['POSTGRES_USER']}:" in cmd
    assert "@postgres:5432/" in cmd
    assert f"--artifacts-destination s3://{env['MLFLOW_BUCKET']}/" in cmd
    assert "--serve-artifacts" in cmd and "--host 0.0.0.0" in cmd  # inside the network
    assert mlflow["environment"]["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert "mlflow:*" in mlflow["environment"]["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")
    assert mlflow["image"] == f"kdtune-mlflow:{pin('mlflow')}"
    assert mlflow["depends_on"] == {"postgres": {"condition": "service_healthy"},
                                    "create-bucket": {"condition":
                                                      "service_completed_successfully"}}
    assert "mc mb" in " ".join(services["create-bucket"]["command"])
    # published ports: host side bound to 127.0.0.1; the database not published at all
    assert "ports" not in services["postgres"]
    published = [p for s in services.values() for p in s.get("ports", [])]
    assert published and all(p.startswith("127.0.0.1:") for p in published), published
    assert any(p.endswith(":5000") for p in published)
    # every secret comes from .env, none is written in the compose file
    for key in ("POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD"):
        assert env[key] not in COMPOSE.read_text()


def docker_compose_available() -> bool:
    if shutil.which("docker") is None:
        return False
    done = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
    return done.returncode == 0


@pytest.mark.skipif(not docker_compose_available(),
                    reason="`docker compose version` fails here (no Docker CLI with the compose "
                           "plugin); the compose file is checked with PyYAML above")
def test_docker_compose_config_accepts_the_file() -> None:
    done = subprocess.run(["docker", "compose", "-f", str(COMPOSE), "--env-file",
                           str(ENV_EXAMPLE), "config", "--quiet"],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


# -- local scripts and docs ------------------------------------------------------------------
LOCAL = CLUSTER / "local"


@pytest.mark.parametrize("script", ["start.sh", "stop.sh", "common.sh"])
def test_local_scripts_parse(script: str) -> None:
    path = LOCAL / script
    done = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stderr
    if script != "common.sh":
        assert os.access(path, os.X_OK), f"{script} is not executable"
    if shutil.which("shellcheck"):
        done = subprocess.run(["shellcheck", "-x", str(path)], capture_output=True, text=True,
                              cwd=LOCAL, check=False)
        assert done.returncode == 0, done.stdout


def test_local_defaults_bind_loopback_only() -> None:
    text = (LOCAL / "common.sh").read_text() + (LOCAL / "start.sh").read_text()
    assert ': "${KDTUNE_MLFLOW_HOST:=127.0.0.1}"' in text
    assert "--node-ip-address 127.0.0.1" in text
    assert "--dashboard-host 127.0.0.1" in text
    assert "ray stop" not in re.sub(r"#.*", "", text)  # it would kill every Ray of the user
    compile((LOCAL / "ray_loopback.py").read_text(), "ray_loopback.py", "exec")


def test_stop_without_a_cluster_is_a_no_op(tmp_path: Path) -> None:
    env = {**os.environ, "KDTUNE_CLUSTER_DIR": str(tmp_path / "none")}
    done = subprocess.run(["bash", str(LOCAL / "stop.sh")], env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert "nothing to stop" in done.stderr
    assert not (tmp_path / "none").exists()


def test_start_refuses_a_ray_temp_dir_too_long_for_sockets(tmp_path: Path) -> None:
    env = {**os.environ, "KDTUNE_CLUSTER_DIR": str(tmp_path / "c"),
           "KDTUNE_RAY_TMP": "/tmp/" + "x" * 60}
    done = subprocess.run(["bash", str(LOCAL / "start.sh")], env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 1
    assert "too long for Ray's unix sockets" in done.stderr
    assert not (tmp_path / "c" / "state.env").exists()


def test_docs_name_only_files_that_exist() -> None:
    doc = (REPO / "docs" / "cluster.md").read_text()
    for cmd in ("cluster/local/start.sh", "ray up cluster/aws/ray-cluster.yaml",
                "kubectl apply -f cluster/kuberay/raycluster.yaml",
                "kubectl apply -f cluster/kuberay/rayjob.yaml",
                "docker compose -f cluster/mlflow/docker-compose.yaml"):
        assert cmd in doc, cmd
    refs = set(re.findall(r"(?<![\w/.-])cluster/[\w./-]+\w", doc)) - {"cluster/mlflow/.env"}
    for ref in sorted(refs):  # (.env is the copy of .env.example users make)
        assert (REPO / ref).exists(), f"docs/cluster.md names {ref}, which does not exist"
