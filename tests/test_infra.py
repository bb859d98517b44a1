"""Infrastructure: Kubernetes manifests, container image recipe and the local cluster scripts.

Fast tests check every manifest under infra/k8s against its schema (built-in kinds with the
schemas kubernetes-validate bundles; KubeRay kinds with infra/k8s/schemas; SparkApplication with
a schema generated from kubeflow-spark-api, the spark-operator's own API models), that a broken
copy is rejected, and that the manifests agree with each other and with the job CLIs. Slow tests
start the real services of infra/local (Spark standalone, a two-node Ray cluster, MLflow) on
127.0.0.1, use them, stop them and check that every recorded process is gone.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "infra"
K8S = INFRA / "k8s"
LOCAL = INFRA / "local"
DOCKERFILE = INFRA / "docker" / "Dockerfile"
IMAGE_ROOT = "/opt/isrec"  # WORKDIR of the image: the repository's files live below it
# kubernetes-validate 1.37.0 bundles schemas for Kubernetes 1.25 .. 1.37.
K8S_VERSION = "1.33.0"
K8S_DEFS_ID = "https://kubernetes.io/api/_definitions.json"

NAMESPACE = "isrec"
IMAGE = "isrec/isrec:0.1.0"
LAKE = "s3a://isrec-lake/lake"
TRACKING_URI = "http://mlflow.isrec.svc.cluster.local:5000"
S3_ENDPOINT = "http://minio.isrec.svc.cluster.local:9000"

CRD_SCHEMAS = {
    ("ray.io/v1", "RayCluster"): "raycluster.ray.io-v1.json",
    ("ray.io/v1", "RayJob"): "rayjob.ray.io-v1.json",
}
SPARK_APP = ("sparkoperator.k8s.io/v1beta2", "SparkApplication")


# ---------------------------------------------------------------------------------------------
# Manifests and schemas


def manifest_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def load_docs() -> list[tuple[str, dict]]:
    docs = []
    for path in manifest_files():
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                docs.append((path.name, doc))
    return docs


DOCS = load_docs()


def doc_id(item: tuple[str, dict]) -> str:
    name, doc = item
    return f"{name}:{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


def docs_of(kind: str) -> list[dict]:
    return [doc for _, doc in DOCS if doc["kind"] == kind]


def one(kind: str, name: str) -> dict:
    (doc,) = [d for d in docs_of(kind) if d["metadata"]["name"] == name]
    return doc


@functools.cache
def k8s_definitions() -> dict:
    import kubernetes_validate

    schemas = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
    path = schemas / f"v{K8S_VERSION}-local-strict" / "_definitions.json"
    defs = json.loads(path.read_text())
    assert defs["$id"] == K8S_DEFS_ID
    return defs


def _close_objects(schema):
    """Forbid unknown fields in every object schema that lists its properties."""
    if isinstance(schema, dict):
        if "properties" in schema and "additionalProperties" not in schema:
            schema["additionalProperties"] = False
        for value in schema.values():
            _close_objects(value)
    elif isinstance(schema, list):
        for value in schema:
            _close_objects(value)
    return schema


@functools.cache
def spark_application_schema() -> dict:
    """JSON Schema of SparkApplication from the spark-operator's generated API models."""
    from kubeflow_spark_api.models import SparkV1beta2SparkApplication

    schema = SparkV1beta2SparkApplication.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return _close_objects(schema)


@functools.cache
def registry():
    from referencing import Registry, Resource

    resources = [Resource.from_contents(k8s_definitions())]
    for name in CRD_SCHEMAS.values():
        resources.append(Resource.from_contents(json.loads((K8S / "schemas" / name).read_text())))
    return Registry().with_resources((r.id(), r) for r in resources)


def schema_errors(doc: dict) -> list[str]:
    """Every schema violation of one manifest, as 'path: message' lines (empty when valid)."""
    import jsonschema
    import kubernetes_validate

    key = (doc.get("apiVersion"), doc.get("kind"))
    if key in CRD_SCHEMAS:
        schema = json.loads((K8S / "schemas" / CRD_SCHEMAS[key]).read_text())
    elif key == SPARK_APP:
        schema = spark_application_schema()
    else:
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            return [f"{'.'.join(map(str, exc.path))}: {exc.message}"]
        return []
    validator = jsonschema.Draft202012Validator(schema, registry=registry())
    return [
        f"{'.'.join(map(str, err.absolute_path))}: {err.message}"
        for err in validator.iter_errors(doc)
    ]


@pytest.mark.parametrize("item", DOCS, ids=doc_id)
def test_manifest_matches_schema(item):
    name, doc = item
    assert doc["metadata"].get("namespace", NAMESPACE) == NAMESPACE or doc["kind"] == "Namespace"
    errors = schema_errors(doc)
    assert not errors, f"{name}: " + "\n".join(errors)


def test_every_kind_has_a_schema():
    import kubernetes_validate

    kinds = {(d["apiVersion"], d["kind"]) for _, d in DOCS}
    assert {SPARK_APP, *CRD_SCHEMAS} <= kinds
    for api_version, kind in kinds - {SPARK_APP, *CRD_SCHEMAS}:
        stub = {"apiVersion": api_version, "kind": kind, "metadata": {"name": "x"}}
        try:
            kubernetes_validate.validate(stub, K8S_VERSION, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            pytest.fail(f"no schema for {api_version} {kind}")
        except kubernetes_validate.ValidationError:
            pass  # the stub itself may be incomplete; what matters is that a schema exists


def _set(doc: dict, path: str, value) -> dict:
    broken = copy.deepcopy(doc)
    *parents, last = path.split(".")
    node = broken
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return broken


BROKEN = [
    # (kind, name, dotted path, wrong value, part of the expected error)
    ("RayCluster", "isrec-ray", "spec.workerGroupSpecs.0.replicas", "two", "replicas"),
    ("RayCluster", "isrec-ray", "spec.headGroupSpec.rayStartParams.num-cpus", 0, "num-cpus"),
    ("RayCluster", "isrec-ray", "spec.authOptions.mode", "password", "mode"),
    ("RayCluster", "isrec-ray", "spec.workerGroupSpecs.0.minReplica", 1, "minReplica"),
    (
        "RayCluster",
        "isrec-ray",
        "spec.headGroupSpec.template.spec.containers.0.resources.limits",
        ["2"],
        "limits",
    ),
    ("RayJob", "isrec-train", "spec.shutdownAfterJobFinishes", "yes", "shutdownAfterJobFinishes"),
    ("RayJob", "isrec-train", "spec.entrypoint", ["python", "jobs/train.py"], "entrypoint"),
    (
        "RayJob",
        "isrec-train",
        "spec.rayClusterSpec.headGroupSpec.template.spec.containers.0.imagee",
        IMAGE,
        "imagee",
    ),
    ("SparkApplication", "isrec-etl", "spec.executor.instances", "2", "instances"),
    ("SparkApplication", "isrec-etl", "spec.sparkConf.spark.sql.shuffle.partitions", 64, "64"),
    ("SparkApplication", "isrec-score", "spec.driver.memmory", "2g", "memmory"),
    ("Deployment", "mlflow", "spec.replicas", "1", "replicas"),
    ("Service", "mlflow", "spec.ports.0.port", "5000", "port"),
    ("StatefulSet", "mlflow-postgres", "spec.template.spec.containers.0.ports", {}, "ports"),
    ("ConfigMap", "isrec-config", "data.ISREC_LAKE", 3, "ISREC_LAKE"),
]


@pytest.mark.parametrize(
    ("kind", "name", "path", "value", "fragment"),
    BROKEN,
    ids=[f"{k}-{p}" for k, _, p, _, _ in BROKEN],
)
def test_schema_rejects_broken_copy(kind, name, path, value, fragment):
    doc = one(kind, name)
    assert not schema_errors(doc)
    if path == "spec.sparkConf.spark.sql.shuffle.partitions":  # a key with dots in it
        broken = copy.deepcopy(doc)
        broken["spec"]["sparkConf"]["spark.sql.shuffle.partitions"] = value
    else:
        broken = _set(doc, path, value)
    errors = schema_errors(broken)
    assert errors, f"{kind}/{name}: {path}={value!r} was accepted"
    assert any(fragment in e for e in errors), errors


# ---------------------------------------------------------------------------------------------
# Consistency between the manifests, the image and the job CLIs


def pod_templates() -> list[tuple[str, dict]]:
    """(where, pod spec) of every pod the manifests describe."""
    found = []
    for name, doc in DOCS:
        spec = doc.get("spec", {})
        where = f"{name}:{doc['kind']}/{doc['metadata']['name']}"
        if doc["kind"] in ("Deployment", "StatefulSet"):
            found.append((where, spec["template"]["spec"]))
        clusters = []
        if doc["kind"] == "RayCluster":
            clusters.append(spec)
        if doc["kind"] == "RayJob":
            clusters.append(spec["rayClusterSpec"])
        for cluster in clusters:
            found.append((f"{where}:head", cluster["headGroupSpec"]["template"]["spec"]))
            for group in cluster.get("workerGroupSpecs", []):
                found.append((f"{where}:{group['groupName']}", group["template"]["spec"]))
    return found


def ray_containers() -> list[tuple[str, dict]]:
    return [
        (where, c)
        for where, pod in pod_templates()
        if ":RayCluster/" in where or ":RayJob/" in where
        for c in pod["containers"]
    ]


def config() -> dict:
    return one("ConfigMap", "isrec-config")["data"]


def test_config_map_holds_the_shared_values():
    assert config()["ISREC_IMAGE"] == IMAGE
    assert config()["ISREC_LAKE"] == LAKE
    assert config()["MLFLOW_TRACKING_URI"] == TRACKING_URI
    assert config()["AWS_ENDPOINT_URL_S3"] == S3_ENDPOINT == config()["MLFLOW_S3_ENDPOINT_URL"]
    assert config()["RAY_USAGE_STATS_ENABLED"] == "0"
    assert config()["MLFLOW_DISABLE_TELEMETRY"] == "true"


def test_one_image_everywhere():
    images = {where: c["image"] for where, pod in pod_templates() for c in pod["containers"]} | {
        f"SparkApplication/{d['metadata']['name']}": d["spec"]["image"]
        for d in docs_of("SparkApplication")
    }
    ours = {w: i for w, i in images.items() if "mlflow-postgres" not in w}
    assert set(ours.values()) == {IMAGE}, ours
    assert len(ours) >= 10


def test_tracking_uri_points_at_the_mlflow_service():
    service = one("Service", "mlflow")
    port = service["spec"]["ports"][0]["port"]
    expected = f"http://{service['metadata']['name']}.{NAMESPACE}.svc.cluster.local:{port}"
    assert expected == TRACKING_URI
    deployment = one("Deployment", "mlflow")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert f"--port={port}" in container["args"]
    allowed = next(a for a in container["args"] if a.startswith("--allowed-hosts="))
    assert f"{expected.removeprefix('http://')}" in allowed.split("=", 1)[1].split(",")
    assert service["spec"]["type"] == "ClusterIP"  # reachable inside the cluster only
    for where, c in ray_containers():
        env = {e["name"]: e.get("value") for e in c.get("env", [])}
        assert env.get("MLFLOW_TRACKING_URI") == TRACKING_URI, where
        assert env.get("RAY_USAGE_STATS_ENABLED") == "0", where
        refs = {s.get("configMapRef", {}).get("name") for s in c.get("envFrom", [])}
        assert "isrec-config" in refs, where


def test_mlflow_uses_postgres_and_an_object_store():
    container = one("Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0]
    args = dict(a.removeprefix("--").split("=", 1) for a in container["args"] if "=" in a)
    postgres = one("Service", "mlflow-postgres")
    assert args["backend-store-uri"].startswith("postgresql+psycopg2://")
    assert (
        f"@{postgres['metadata']['name']}.{NAMESPACE}.svc.cluster.local:5432/"
        in args["backend-store-uri"]
    )
    assert args["artifacts-destination"].startswith("s3://")
    assert "--serve-artifacts" in container["args"]
    assert one("StatefulSet", "mlflow-postgres")["spec"]["serviceName"] == "mlflow-postgres"
    env_names = {e["name"] for e in container["env"]}
    for var in re.findall(r"\$\((\w+)\)", args["backend-store-uri"]):
        assert var in env_names  # Kubernetes expands $(VAR) only for variables defined in env


def test_referenced_config_maps_secrets_and_accounts_exist():
    defined = {(d["kind"], d["metadata"]["name"]) for _, d in DOCS}
    pods = pod_templates()
    for app in docs_of("SparkApplication"):
        for role in ("driver", "executor"):
            pods.append((app["metadata"]["name"], app["spec"][role]))
            account = app["spec"][role].get("serviceAccount")
            if account:
                assert ("ServiceAccount", account) in defined
    for where, pod in pods:
        for c in pod.get("containers", [pod]):
            for source in c.get("envFrom", []):
                if "configMapRef" in source:
                    assert ("ConfigMap", source["configMapRef"]["name"]) in defined, where
                if "secretRef" in source:
                    assert ("Secret", source["secretRef"]["name"]) in defined, where
            for var in c.get("env", []):
                ref = var.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    secret = one("Secret", ref["name"])
                    assert ref["key"] in secret["stringData"], where


def image_path(uri: str) -> Path:
    """The repository file an in-image path (/opt/isrec/..., local:///opt/isrec/...) comes from."""
    path = uri.removeprefix("local://")
    assert path.startswith(IMAGE_ROOT + "/"), uri
    return ROOT / path.removeprefix(IMAGE_ROOT + "/")


def test_ray_jobs_run_train_py_with_valid_arguments():
    from train.train_config import parse_config

    jobs = docs_of("RayJob")
    assert {j["metadata"]["name"] for j in jobs} == {"isrec-train", "isrec-train-gpu"}
    for job in jobs:
        argv = shlex.split(job["spec"]["entrypoint"])
        assert argv[0] == "python"
        assert image_path(argv[1]) == ROOT / "jobs" / "train.py"
        assert image_path(argv[1]).is_file()
        cfg = parse_config(argv[2:])
        assert cfg.lake == LAKE
        assert cfg.model == "rnn_mtl"
        assert cfg.num_workers == 2
        workers = job["spec"]["rayClusterSpec"]["workerGroupSpecs"]
        assert sum(g["replicas"] for g in workers) >= cfg.num_workers
        gpus = [
            c["resources"]["limits"].get("nvidia.com/gpu")
            for g in workers
            for c in g["template"]["spec"]["containers"]
        ]
        if job["metadata"]["name"].endswith("-gpu"):
            assert cfg.use_gpu and all(n == "1" for n in gpus)
        else:
            assert not cfg.use_gpu and not any(gpus)
        assert job["spec"]["rayClusterSpec"]["authOptions"]["mode"] == "token"


def test_gpu_worker_group_in_the_ray_cluster():
    groups = {g["groupName"]: g for g in one("RayCluster", "isrec-ray")["spec"]["workerGroupSpecs"]}
    gpu = groups["gpu"]["template"]["spec"]
    limits = gpu["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "1"
    assert any(t["key"] == "nvidia.com/gpu" for t in gpu["tolerations"])


def _score_cli(arguments: list[str]) -> dict:
    """Parse arguments with jobs/score.py's own parser (in a subprocess: it edits sys.path)."""
    code = textwrap.dedent(
        """
        import importlib.util, json, sys
        spec = importlib.util.spec_from_file_location("score_job", sys.argv[1])
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        print(json.dumps(vars(module.parse_args(json.loads(sys.argv[2])))))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(ROOT / "jobs" / "score.py"), json.dumps(arguments)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_spark_applications_run_the_jobs_with_valid_arguments():
    import argparse

    from etl.config import add_arguments
    from etl.spark import DELTA_CONF, DELTA_JAR_NAMES

    etl, score = one("SparkApplication", "isrec-etl"), one("SparkApplication", "isrec-score")
    assert image_path(etl["spec"]["mainApplicationFile"]) == ROOT / "jobs" / "etl.py"
    assert image_path(score["spec"]["mainApplicationFile"]) == ROOT / "jobs" / "score.py"

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    etl_args = parser.parse_args(etl["spec"]["arguments"])
    assert etl_args.output == LAKE
    assert etl_args.input.startswith("s3a://")
    assert _score_cli(score["spec"]["arguments"])["lake"] == LAKE

    for app in (etl, score):
        spec = app["spec"]
        assert spec["sparkVersion"] == "3.5.5"
        conf = spec["sparkConf"]
        for key, value in DELTA_CONF.items():
            assert conf[key] == value
        assert conf["spark.hadoop.fs.s3a.endpoint"] == S3_ENDPOINT
        jars = [Path(j.removeprefix("local://")).name for j in spec["deps"]["jars"]]
        assert set(DELTA_JAR_NAMES) <= set(jars)
        assert "org.apache.hadoop_hadoop-aws-3.3.4.jar" in jars
        for jar in spec["deps"]["jars"]:
            assert jar.startswith(f"local://{IMAGE_ROOT}/.ivy2/jars/")
            assert Path(jar).name in DOCKERFILE.read_text(), f"{jar} is not built into the image"


def test_kustomization_lists_existing_files():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    for resource in kustomization["resources"]:
        assert (K8S / resource).is_file(), resource
    kubectl = shutil.which("kubectl")
    if kubectl:  # client-side build only, no cluster needed
        out = subprocess.run(
            [kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=120
        )
        assert out.returncode == 0, out.stderr
        kinds = [d["kind"] for d in yaml.safe_load_all(out.stdout) if d]
        assert "RayCluster" in kinds and "Deployment" in kinds


# ---------------------------------------------------------------------------------------------
# Container image recipe (no Docker engine here: a parse-level check)


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and heredoc bodies skipped."""
    lines = DOCKERFILE.read_text().splitlines()
    out: list[tuple[str, str]] = []
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        i += 1
        if not line or line.startswith("#"):
            continue
        while line.endswith("\\") and i < len(lines):
            line = line[:-1] + " " + lines[i].strip()
            i += 1
        heredoc = re.search(r"<<-?'?(\w+)'?", line)
        if heredoc:
            while i < len(lines) and lines[i].strip() != heredoc.group(1):
                i += 1
            i += 1
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_builds_the_pinned_stack():
    instructions = dockerfile_instructions()
    words = [w for w, _ in instructions]
    assert set(words) <= {
        "FROM",
        "RUN",
        "COPY",
        "ENV",
        "ARG",
        "WORKDIR",
        "USER",
        "ENTRYPOINT",
        "CMD",
        "LABEL",
    }
    assert instructions[0][0] == "FROM" and instructions[0][1].startswith("python:3.11")
    runs = " ".join(a for w, a in instructions if w == "RUN")
    assert "openjdk-17-jre-headless" in runs
    assert re.search(r"pip install \.(\s|$)", runs), "the image installs the project (pyproject)"
    assert "python -m etl.spark --fetch-jars" in runs
    assert "hadoop-aws:3.3.4" in DOCKERFILE.read_text()
    workdir = [a for w, a in instructions if w == "WORKDIR"]
    assert workdir == [IMAGE_ROOT]
    users = [a for w, a in instructions if w == "USER"]
    assert users and users[-1] not in ("root", "0"), "the image must run as a non-root user"
    entrypoint = json.loads(next(a for w, a in instructions if w == "ENTRYPOINT"))
    assert "/opt/entrypoint.sh" in entrypoint


def test_dockerfile_copies_existing_files():
    ignore = (INFRA / "docker" / "Dockerfile.dockerignore").read_text().splitlines()
    allowed = [p[1:] for p in ignore if p.startswith("!")]
    for word, args in dockerfile_instructions():
        if word != "COPY":
            continue
        *sources, _dest = [a for a in args.split() if not a.startswith("--")]
        matched = 0
        for source in sources:
            hits = list(ROOT.glob(source)) if any(c in source for c in "*?[") else [ROOT / source]
            hits = [p for p in hits if p.exists()]
            if not any(c in source for c in "*?["):
                assert hits, f"COPY {source}: no such file in the repository"
            matched += len(hits)
            for hit in hits:  # not filtered out of the build context
                rel = str(hit.relative_to(ROOT))
                assert any(rel == a or rel.startswith(a + "/") for a in allowed), rel
        assert matched, f"COPY {args}: matches nothing"


def test_entrypoint_script_is_valid_bash():
    script = INFRA / "docker" / "entrypoint.sh"
    assert os.access(script, os.X_OK)
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    assert "KubernetesExecutorBackend" in text and "--deploy-mode client" in text


# ---------------------------------------------------------------------------------------------
# Local scripts


SCRIPTS = ["lib.sh", "spark.sh", "ray.sh", "mlflow.sh", "all.sh"]


@pytest.mark.parametrize("name", SCRIPTS)
def test_script_syntax_and_style(name):
    path = LOCAL / name
    subprocess.run(["bash", "-n", str(path)], check=True)
    text = path.read_text()
    if name != "lib.sh":
        assert os.access(path, os.X_OK)
        assert "set -euo pipefail" in text
    # Stopping is by recorded PID only: never by process name, never Ray's machine-wide stop.
    assert not re.search(r"\b(pkill|killall)\b", text)
    assert not re.search(r"^\s*ray stop\b", text, re.M)
    shellcheck = shutil.which("shellcheck")
    if shellcheck:
        out = subprocess.run(
            [shellcheck, "-x", "-S", "warning", str(path)], capture_output=True, text=True
        )
        assert out.returncode == 0, out.stdout


def test_scripts_refuse_unknown_commands(tmp_path):
    env = {**os.environ, "ISREC_CLUSTER_DIR": str(tmp_path)}
    for name in ("spark.sh", "ray.sh", "mlflow.sh", "all.sh"):
        out = subprocess.run(
            [str(LOCAL / name), "bogus"], capture_output=True, text=True, env=env, timeout=60
        )
        assert out.returncode == 2
        assert "usage" in out.stderr


def test_env_prints_client_settings(tmp_path):
    env = {**os.environ, "ISREC_CLUSTER_DIR": str(tmp_path), "ISREC_RAY_DASHBOARD_PORT": "18999"}
    out = subprocess.run(
        [str(LOCAL / "all.sh"), "env"], capture_output=True, text=True, env=env, timeout=60
    )
    assert out.returncode == 0, out.stderr
    exports = dict(line.removeprefix("export ").split("=", 1) for line in out.stdout.splitlines())
    assert exports["ISREC_SPARK_MASTER"] == "spark://127.0.0.1:7077"
    assert exports["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:5000"
    assert exports["RAY_API_SERVER_ADDRESS"] == "http://127.0.0.1:18999"
    assert exports["RAY_AUTH_MODE"] == "token"
    assert exports["RAY_AUTH_TOKEN_PATH"] == str(tmp_path / "ray" / "auth_token")
    assert exports["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"


# ---------------------------------------------------------------------------------------------
# Slow: the real services on 127.0.0.1


def free_ports(n: int, consecutive: bool = False) -> list[int]:
    """n TCP ports free on 127.0.0.1 (optionally a consecutive block)."""
    while True:
        socks = []
        try:
            first = socket.socket()
            first.bind(("127.0.0.1", 0))
            socks.append(first)
            base = first.getsockname()[1]
            ports = [base]
            for k in range(1, n):
                s = socket.socket()
                s.bind(("127.0.0.1", base + k if consecutive else 0))
                socks.append(s)
                ports.append(s.getsockname()[1])
            return ports
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()


def run_script(name: str, command: str, env: dict, timeout: int = 900):
    return subprocess.run(
        [str(LOCAL / name), command], capture_output=True, text=True, env=env, timeout=timeout
    )


def starttime(pid: int) -> str | None:
    """Start time of a live process (None when gone or a zombie), as lib.sh reads it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] == "Z" else fields[19]


def recorded(state: Path, *services: str) -> dict[int, str]:
    """PID -> start time of every process recorded for the services (their *.pids files)."""
    pids = {}
    for service in services:
        for line in (state / f"{service}.pids").read_text().split():
            start = starttime(int(line))
            if start:
                pids[int(line)] = start
    return pids


def assert_gone(pids: dict[int, str]) -> None:
    alive = [pid for pid, start in pids.items() if starttime(pid) == start]
    assert not alive, f"still running after stop: {alive}"


def assert_loopback_only(pids: dict[int, str]) -> None:
    import psutil

    listening = []
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            conns = (
                proc.net_connections() if hasattr(proc, "net_connections") else proc.connections()
            )
        except psutil.Error:
            continue
        listening += [(pid, c.laddr) for c in conns if c.status == psutil.CONN_LISTEN]
    assert listening
    outside = [(pid, a) for pid, a in listening if a.ip not in ("127.0.0.1", "::ffff:127.0.0.1")]
    assert not outside, f"listening beyond 127.0.0.1: {outside}"


def http(url: str, token: str | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture
def cluster_env(tmp_path):
    env = {
        **os.environ,
        "ISREC_CLUSTER_DIR": str(tmp_path / "cluster"),
        "ISREC_PYTHON": sys.executable,
        "ISREC_START_TIMEOUT": "300",
    }
    return env


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_spark_standalone_cluster(cluster_env, tmp_path):
    from etl.spark import DELTA_CONF, delta_jar_paths, fetch_jars

    master, master_ui, worker, worker_ui = free_ports(4)
    env = {
        **cluster_env,
        "ISREC_SPARK_MASTER_PORT": str(master),
        "ISREC_SPARK_MASTER_UI_PORT": str(master_ui),
        "ISREC_SPARK_WORKER_PORT": str(worker),
        "ISREC_SPARK_WORKER_UI_PORT": str(worker_ui),
    }
    state = Path(env["ISREC_CLUSTER_DIR"])
    url = f"spark://127.0.0.1:{master}"
    try:
        out = run_script("spark.sh", "start", env)
        assert out.returncode == 0, out.stdout + out.stderr
        assert out.stdout.strip().splitlines()[-1] == url
        again = run_script("spark.sh", "start", env)
        assert again.returncode == 0 and "already running" in again.stdout
        assert run_script("spark.sh", "status", env).returncode == 0
        pids = recorded(state, "spark-master", "spark-worker")
        assert len(pids) >= 2
        assert_loopback_only(pids)

        app = tmp_path / "app.py"
        app.write_text(
            textwrap.dedent(
                """
                import sys
                from pyspark.sql import SparkSession

                spark = SparkSession.builder.appName("isrec-infra-smoke").getOrCreate()
                spark.range(1000).write.format("delta").mode("overwrite").save(sys.argv[1])
                rows = spark.read.format("delta").load(sys.argv[1]).count()
                print(f"RESULT master={spark.sparkContext.master} rows={rows}")
                spark.stop()
                """
            )
        )
        jars = delta_jar_paths() if all(p.is_file() for p in delta_jar_paths()) else fetch_jars()
        conf = {
            **DELTA_CONF,
            "spark.driver.host": "127.0.0.1",
            "spark.driver.bindAddress": "127.0.0.1",
            "spark.ui.enabled": "false",
            "spark.executor.memory": "1g",
            "spark.cores.max": "1",
            "spark.pyspark.python": sys.executable,
        }
        spark_submit = Path(sys.executable).parent / "spark-submit"
        command = [str(spark_submit), "--master", url, "--jars", ",".join(map(str, jars))]
        for key, value in conf.items():
            command += ["--conf", f"{key}={value}"]
        command += [str(app), str(tmp_path / "delta-table")]
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=900,
            env={**env, "SPARK_LOCAL_IP": "127.0.0.1"},
        )
        assert result.returncode == 0, result.stderr[-3000:]
        assert f"RESULT master={url} rows=1000" in result.stdout
        assert (tmp_path / "delta-table" / "_delta_log").is_dir()
        assert any((state / "spark" / "work").glob("app-*")), "the job ran on the standalone worker"
    finally:
        stopped = run_script("spark.sh", "stop", env)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert_gone(pids)
    assert run_script("spark.sh", "status", env).returncode == 3
    assert not (state / "spark-master.pid").exists()


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_ray_two_node_cluster(cluster_env):
    gcs, dashboard, client = free_ports(3)
    agent_base = free_ports(8, consecutive=True)[0]
    env = {
        **cluster_env,
        "ISREC_RAY_PORT": str(gcs),
        "ISREC_RAY_DASHBOARD_PORT": str(dashboard),
        "ISREC_RAY_CLIENT_PORT": str(client),
        "ISREC_RAY_AGENT_PORT_BASE": str(agent_base),
        "ISREC_RAY_HEAD_WORKER_PORTS": "23000-23499",
        "ISREC_RAY_NODE_WORKER_PORTS": "23500-23999",
        "ISREC_RAY_START_ATTEMPTS": "3",
    }
    state = Path(env["ISREC_CLUSTER_DIR"])
    address = f"http://127.0.0.1:{dashboard}"
    pids: dict[int, str] = {}
    try:
        out = run_script("ray.sh", "start", env, timeout=1500)
        assert out.returncode == 0, out.stdout + out.stderr
        assert out.stdout.strip().splitlines()[-1] == address
        pids = recorded(state, "ray-head", "ray-node")
        again = run_script("ray.sh", "start", env)
        assert again.returncode == 0 and "already running" in again.stdout
        assert_loopback_only(pids)

        token = (state / "ray" / "auth_token").read_text()
        assert oct((state / "ray" / "auth_token").stat().st_mode & 0o777) == "0o600"
        assert http(f"{address}/api/jobs/")[0] in (401, 403), "job API open without the token"
        assert http(f"{address}/api/jobs/", token)[0] == 200

        client_env = dict(env)
        exports = run_script("ray.sh", "env", env).stdout.splitlines()
        for line in exports:
            key, value = line.removeprefix("export ").split("=", 1)
            client_env[key] = value
        probe = (
            "import ray; ray.init(); "
            "print('NODES', sum(n['Alive'] for n in ray.nodes()), "
            "sorted({n['NodeManagerAddress'] for n in ray.nodes()}))"
        )
        ray_cli = Path(sys.executable).parent / "ray"
        submitted = subprocess.run(
            [str(ray_cli), "job", "submit", "--address", address, "--", "python", "-c", probe],
            capture_output=True,
            text=True,
            env=client_env,
            timeout=600,
        )
        assert submitted.returncode == 0, submitted.stdout + submitted.stderr
        assert "NODES 2 ['127.0.0.1']" in submitted.stdout, submitted.stdout
        assert run_script("ray.sh", "status", env).returncode == 0
    finally:
        if not pids and (state / "ray-head.pids").exists():
            pids = recorded(state, "ray-head", "ray-node")
        stopped = run_script("ray.sh", "stop", env)
        ray_tmp = state / "ray" / "tmp"  # Ray's temp dirs live in /tmp (short socket paths)
        if ray_tmp.is_symlink():
            shutil.rmtree(ray_tmp.resolve(), ignore_errors=True)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert_gone(pids)
    assert run_script("ray.sh", "status", env).returncode == 3


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_mlflow_server(cluster_env):
    (port,) = free_ports(1)
    env = {**cluster_env, "ISREC_MLFLOW_PORT": str(port)}
    state = Path(env["ISREC_CLUSTER_DIR"])
    uri = f"http://127.0.0.1:{port}"
    pids: dict[int, str] = {}
    try:
        out = run_script("mlflow.sh", "start", env)
        assert out.returncode == 0, out.stdout + out.stderr
        assert out.stdout.strip().splitlines()[-1] == uri
        pids = recorded(state, "mlflow")
        assert http(f"{uri}/health") == (200, "OK")
        again = run_script("mlflow.sh", "start", env)
        assert again.returncode == 0 and "already running" in again.stdout
        assert_loopback_only(pids)

        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=uri)
        experiment = client.create_experiment("infra-smoke")
        run = client.create_run(experiment)
        client.log_metric(run.info.run_id, "auc", 0.75)
        assert client.get_run(run.info.run_id).data.metrics["auc"] == 0.75
        assert (state / "mlflow" / "mlflow.db").is_file()
    finally:
        if not pids and (state / "mlflow.pids").exists():
            pids = recorded(state, "mlflow")
        stopped = run_script("mlflow.sh", "stop", env)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert_gone(pids)
    assert run_script("mlflow.sh", "status", env).returncode == 3
