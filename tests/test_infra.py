"""Infrastructure: Kubernetes manifests, container image recipe and the local cluster scripts.

Fast tests check every manifest under infra/k8s against its schema (built-in kinds with the
schemas kubernetes-validate bundles; KubeRay kinds with infra/k8s/schemas; SparkApplication with
a schema generated from kubeflow-spark-api, the spark-operator's own API models), that a broken
copy is rejected, and that the manifests agree with each other and with the job CLIs. The slow
test starts the real services of infra/local once (Spark standalone, a two-node Ray cluster with
token auth, MLflow) on 127.0.0.1, runs the jobs through them end to end (spark-submit
jobs/etl.py, ray job submit jobs/train.py, the run and registered model in the MLflow server),
stops them and checks that every recorded process is gone.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import secrets
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
S3_ENDPOINT = "http://isrec-s3.isrec.svc.cluster.local:8333"
RAY_VERSION = "2.55.1"
LOCK = INFRA / "docker" / "requirements.lock"
# Kustomizations: the long-lived base, the one-shot jobs, the optional object store; the image
# of every one comes from the component in image/.
KUSTOMIZATIONS = {".": "base", "jobs": "jobs", "object-store": "object store"}

CRD_SCHEMAS = {
    ("ray.io/v1", "RayCluster"): "raycluster.ray.io-v1.json",
    ("ray.io/v1", "RayJob"): "rayjob.ray.io-v1.json",
}
SPARK_APP = ("sparkoperator.k8s.io/v1beta2", "SparkApplication")


# ---------------------------------------------------------------------------------------------
# Manifests and schemas


def manifest_files() -> list[Path]:
    """Every manifest under infra/k8s (not the kustomize files of image/ and kustomization.yaml)."""
    return sorted(
        p
        for p in K8S.rglob("*.yaml")
        if p.name != "kustomization.yaml" and p.parent != K8S / "image"
    )


def load_docs() -> list[tuple[str, dict]]:
    docs = []
    for path in manifest_files():
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                docs.append((str(path.relative_to(K8S)), doc))
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
    ("NetworkPolicy", "default-deny-all", "spec.podSelector", "all", "podSelector"),
    ("NetworkPolicy", "spark", "spec.ingress.0.ports.0.protocol", 6, "protocol"),
    ("Job", "isrec-s3-buckets", "spec.backoffLimit", "ten", "backoffLimit"),
    ("Job", "isrec-s3-buckets", "spec.completions", "all", "completions"),
    (
        "RayJob",
        "isrec-train",
        "spec.submitterPodTemplate.spec.containers.0.securityContext.runAsUser",
        "me",
        "runAsUser",
    ),
    (
        "SparkApplication",
        "isrec-etl",
        "spec.driver.template.spec.securityContext.runAsNonRoot",
        "yes",
        "runAsNonRoot",
    ),
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
    """(where, pod spec) of every pod the manifests describe (Spark's from its pod templates)."""
    found = []
    for name, doc in DOCS:
        spec = doc.get("spec", {})
        where = f"{name}:{doc['kind']}/{doc['metadata']['name']}"
        if doc["kind"] in ("Deployment", "StatefulSet", "Job"):
            found.append((where, spec["template"]["spec"]))
        if doc["kind"] == "SparkApplication":
            for role in ("driver", "executor"):
                found.append((f"{where}:{role}", spec[role]["template"]["spec"]))
        clusters = []
        if doc["kind"] == "RayCluster":
            clusters.append(spec)
        if doc["kind"] == "RayJob":
            clusters.append(spec["rayClusterSpec"])
            found.append((f"{where}:submitter", spec["submitterPodTemplate"]["spec"]))
        for cluster in clusters:
            found.append((f"{where}:head", cluster["headGroupSpec"]["template"]["spec"]))
            for group in cluster.get("workerGroupSpecs", []):
                found.append((f"{where}:{group['groupName']}", group["template"]["spec"]))
    return found


def containers_of(pod: dict) -> list[dict]:
    return [*pod.get("initContainers", []), *pod["containers"]]


def ray_containers() -> list[tuple[str, dict]]:
    return [
        (where, c)
        for where, pod in pod_templates()
        if (":RayCluster/" in where or ":RayJob/" in where) and not where.endswith(":submitter")
        for c in pod["containers"]
    ]


def config() -> dict:
    return one("ConfigMap", "isrec-config")["data"]


def test_config_map_holds_the_shared_values():
    assert config()["ISREC_LAKE"] == LAKE
    assert config()["MLFLOW_TRACKING_URI"] == TRACKING_URI
    assert config()["AWS_ENDPOINT_URL_S3"] == S3_ENDPOINT == config()["MLFLOW_S3_ENDPOINT_URL"]
    assert config()["RAY_USAGE_STATS_ENABLED"] == "0"
    assert config()["MLFLOW_DISABLE_TELEMETRY"] == "true"


def all_images() -> dict[str, tuple[str, str | None]]:
    """where -> (image, imagePullPolicy) of every container that names an image."""
    images = {
        f"{where}:{c['name']}": (c["image"], c.get("imagePullPolicy"))
        for where, pod in pod_templates()
        for c in containers_of(pod)
        if "image" in c  # Spark's pod templates take the image from spec.image
    }
    for app in docs_of("SparkApplication"):
        images[f"SparkApplication/{app['metadata']['name']}"] = (
            app["spec"]["image"],
            app["spec"].get("imagePullPolicy"),
        )
    return images


def test_one_image_everywhere():
    images = {w: image for w, (image, _) in all_images().items()}
    ours = {w: i for w, i in images.items() if not i.startswith(("postgres:", "chrislusf/"))}
    assert set(ours.values()) == {IMAGE}, ours
    assert len(ours) >= 14
    for where, image in images.items():  # third-party images: pinned by digest
        if where not in ours:
            assert re.search(r"@sha256:[0-9a-f]{64}$", image), where


def test_no_mutable_tag_with_if_not_present():
    """A tag can be pushed again: a node that has it cached would keep running the old image.
    Without a digest, pods must pull (Always), so every start resolves the tag anew."""
    for where, (image, policy) in all_images().items():
        if "@sha256:" not in image:
            assert policy == "Always", f"{where}: {image} with imagePullPolicy {policy}"


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
    secrets = {d["metadata"]["name"] for d in docs_of("Secret")}
    for app in docs_of("SparkApplication"):
        for role in ("driver", "executor"):
            account = app["spec"][role].get("serviceAccount")
            if account:
                assert ("ServiceAccount", account) in defined
        for key, value in app["spec"]["sparkConf"].items():
            if ".secretKeyRef." in key:  # spark.kubernetes.<role>.secretKeyRef.ENV: SECRET:KEY
                secret, secret_key = value.split(":")
                assert secret in secrets and secret_key in one("Secret", secret)["stringData"]
    for where, pod in pods:
        for c in containers_of(pod):
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
    from etl.cli import parse
    from train.promote_config import PromoteConfig
    from train.train_config import parse_config

    jobs = docs_of("RayJob")
    assert {j["metadata"]["name"] for j in jobs} == {"isrec-train", "isrec-train-gpu"}
    for job in jobs:
        # Training, then the promotion gate, so that @champion exists before scoring.
        train, promote = (shlex.split(step) for step in job["spec"]["entrypoint"].split("&&"))
        assert train[0] == promote[0] == "python"
        assert image_path(train[1]) == ROOT / "jobs" / "train.py"
        assert image_path(train[1]).is_file()
        cfg = parse_config(train[2:])
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
        assert job["spec"]["rayClusterSpec"]["rayVersion"] == RAY_VERSION
        assert image_path(promote[1]) == ROOT / "jobs" / "promote.py"
        gate = parse(PromoteConfig, promote[2:])
        assert gate.model_name == f"isrec-{cfg.model}"
        scored = _score_cli(one("SparkApplication", "isrec-score")["spec"]["arguments"])
        assert scored["model_uri"] == f"models:/{gate.model_name}@champion"


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
    assert etl["spec"]["sparkConf"]["spark.sql.shuffle.partitions"] == "64"

    for app in (etl, score):
        spec = app["spec"]
        assert spec["sparkVersion"] == "3.5.5"
        conf = spec["sparkConf"]
        for key, value in DELTA_CONF.items():
            assert conf[key] == value
        # The endpoint comes from isrec-config (etl.spark reads AWS_ENDPOINT_URL_S3 in the
        # driver), credentials from S3A's default chain: nothing hard-coded, no forced provider.
        assert not any(k.startswith("spark.hadoop.fs.s3a.endpoint") for k in conf)
        assert "spark.hadoop.fs.s3a.aws.credentials.provider" not in conf
        for role in ("driver", "executor"):
            sources = spec[role]["template"]["spec"]["containers"][0]["envFrom"]
            assert {"configMapRef": {"name": "isrec-config"}} in sources
            for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
                ref = conf[f"spark.kubernetes.{role}.secretKeyRef.{var}"]
                assert ref == f"isrec-s3-lake:{var}"  # Spark's own, no webhook
            assert "envFrom" not in spec[role] and "env" not in spec[role]  # webhook-only
            name = spec[role]["template"]["spec"]["containers"][0]["name"]
            assert conf[f"spark.kubernetes.{role}.podTemplateContainerName"] == name
        assert conf["spark.authenticate"] == "true"  # Spark generates the secret per app
        assert conf["spark.network.crypto.enabled"] == "true"
        assert spec["executor"]["memoryOverhead"]
        jars = [Path(j.removeprefix("local://")).name for j in spec["deps"]["jars"]]
        assert set(DELTA_JAR_NAMES) <= set(jars)
        assert "org.apache.hadoop_hadoop-aws-3.3.4.jar" in jars
        for jar in spec["deps"]["jars"]:
            assert jar.startswith(f"local://{IMAGE_ROOT}/.ivy2/jars/")
            assert Path(jar).name in DOCKERFILE.read_text(), f"{jar} is not built into the image"


def kustomize(directory: Path) -> list[dict]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is not installed (client-side `kubectl kustomize` renders infra/k8s)"
    out = subprocess.run(
        [kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def test_kustomizations_list_every_manifest_once():
    listed = []
    for directory in KUSTOMIZATIONS:
        kustomization = yaml.safe_load((K8S / directory / "kustomization.yaml").read_text())
        assert kustomization["components"] == ["../image" if directory != "." else "image"]
        for resource in kustomization["resources"]:
            assert (K8S / directory / resource).is_file(), resource
            listed.append((K8S / directory / resource).resolve())
    expected = [p.resolve() for p in manifest_files() if p.name != "secrets.example.yaml"]
    assert sorted(listed) == sorted(expected)
    kinds = [d["kind"] for d in kustomize(K8S)]
    assert "RayCluster" in kinds and "Deployment" in kinds and "NetworkPolicy" in kinds
    assert "RayJob" not in kinds and "SparkApplication" not in kinds  # one-shot: jobs/


def test_image_override_reaches_every_workload(tmp_path):
    """One `images:` entry (image/kustomization.yaml) sets registry and digest everywhere,
    SparkApplication.spec.image included."""
    tree = tmp_path / "k8s"
    shutil.copytree(K8S, tree)
    component = tree / "image" / "kustomization.yaml"
    digest = "sha256:" + "ab" * 32
    text = component.read_text().replace("newName: isrec/isrec", "newName: reg.example/isrec")
    component.write_text(text.replace("newTag: 0.1.0", f"digest: {digest}"))
    images = []
    for directory in KUSTOMIZATIONS:
        docs = kustomize(tree / directory)
        found = json.dumps(docs)
        assert f'"{IMAGE}"' not in found, directory
        images += re.findall(r'"image": "(reg\.example/isrec@[^"]+)"', found)
    assert set(images) == {f"reg.example/isrec@{digest}"}
    assert len(images) >= 14


def test_run_job_script_knows_every_job():
    script = K8S / "run-job.sh"
    assert os.access(script, os.X_OK)
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    for job in docs_of("RayJob") + docs_of("SparkApplication"):
        name = job["metadata"]["name"]
        assert job["metadata"]["labels"]["app.kubernetes.io/name"] == name  # its -l selector
        assert f"name={name} " in text, name
    out = subprocess.run([str(script), "bogus"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "usage" in out.stderr
    assert_shellcheck_clean(script)


# ---------------------------------------------------------------------------------------------
# Security: Pod Security "restricted", NetworkPolicies, credentials per bucket


def security_problems(pod: dict) -> list[str]:
    """Why a pod would break Pod Security "restricted" (empty when it passes): root, privileged,
    privilege escalation, kept capabilities, no RuntimeDefault seccomp, host namespaces."""
    problems = []
    pod_ctx = pod.get("securityContext", {})
    if pod_ctx.get("runAsUser") == 0:
        problems.append("pod runs as root (runAsUser 0)")
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(flag):
            problems.append(f"pod sets {flag}")
    for volume in pod.get("volumes", []):
        if "hostPath" in volume:
            problems.append(f"hostPath volume {volume['name']}")
    for c in containers_of(pod):
        ctx = c.get("securityContext", {})
        name = c["name"]
        if ctx.get("privileged"):
            problems.append(f"{name}: privileged")
        if not ctx.get("runAsNonRoot", pod_ctx.get("runAsNonRoot")):
            problems.append(f"{name}: runAsNonRoot is not true")
        if ctx.get("runAsUser", pod_ctx.get("runAsUser")) in (0, None):
            problems.append(f"{name}: runs as root (or the image's user)")
        if ctx.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation is not false")
        if ctx.get("capabilities", {}).get("drop") != ["ALL"] or ctx["capabilities"].get("add"):
            problems.append(f"{name}: capabilities are not drop: [ALL]")
        seccomp = ctx.get("seccompProfile", pod_ctx.get("seccompProfile", {}))
        if seccomp.get("type") not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{name}: no RuntimeDefault seccomp profile")
    return problems


def test_namespace_enforces_pod_security_restricted():
    labels = one("Namespace", NAMESPACE)["metadata"]["labels"]
    for mode in ("enforce", "audit", "warn"):
        assert labels[f"pod-security.kubernetes.io/{mode}"] == "restricted"


@pytest.mark.parametrize("where", [w for w, _ in pod_templates()])
def test_every_pod_is_restricted(where):
    pod = dict(pod_templates())[where]
    assert not security_problems(pod), security_problems(pod)


def test_autoscaler_sidecar_is_restricted():
    ctx = one("RayCluster", "isrec-ray")["spec"]["autoscalerOptions"]["securityContext"]
    assert ctx["allowPrivilegeEscalation"] is False and ctx["capabilities"]["drop"] == ["ALL"]


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda pod, c: c["securityContext"].update(privileged=True), "privileged"),
        (lambda pod, c: c["securityContext"].update(runAsUser=0), "root"),
        (lambda pod, c: pod["securityContext"].update(runAsUser=0), "root"),
        (lambda pod, c: pod["securityContext"].pop("runAsNonRoot"), "runAsNonRoot"),
        (lambda pod, c: c["securityContext"].pop("allowPrivilegeEscalation"), "Escalation"),
        (lambda pod, c: c["securityContext"]["capabilities"].update(add=["NET_ADMIN"]), "capab"),
        (lambda pod, c: pod["securityContext"].pop("seccompProfile"), "seccomp"),
        (lambda pod, c: pod.update(hostNetwork=True), "hostNetwork"),
    ],
)
def test_security_check_fails_on_a_privileged_or_root_container(change, problem):
    pod = copy.deepcopy(one("Deployment", "mlflow")["spec"]["template"]["spec"])
    assert not security_problems(pod)
    change(pod, pod["containers"][0])
    assert any(problem in p for p in security_problems(pod)), security_problems(pod)


def _selects(policy: dict, labels: dict[str, str]) -> bool:
    selector = policy["spec"]["podSelector"]
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions", []):
        present = expr["key"] in labels
        if expr["operator"] == "Exists" and not present:
            return False
        if expr["operator"] == "In" and labels.get(expr["key"]) not in expr["values"]:
            return False
    return True


def test_network_policies_deny_by_default_and_open_what_each_needs():
    policies = {p["metadata"]["name"]: p for p in docs_of("NetworkPolicy")}
    deny = policies["default-deny-all"]["spec"]
    assert deny["podSelector"] == {} and set(deny["policyTypes"]) == {"Ingress", "Egress"}
    assert "ingress" not in deny and "egress" not in deny
    # The labels KubeRay and Spark put on their pods select the Ray and Spark policies.
    ray_pod = {"ray.io/node-type": "worker", "ray.io/cluster": "isrec-ray"}
    spark_pod = {"spark-role": "executor"}
    assert [n for n, p in policies.items() if _selects(p, ray_pod) and n != "allow-dns"] == [
        "default-deny-all",
        "ray",
    ]
    assert "spark" in [n for n, p in policies.items() if _selects(p, spark_pod)]
    spark_ports = {
        port["port"] for rule in policies["spark"]["spec"]["ingress"] for port in rule["ports"]
    }
    for app in docs_of("SparkApplication"):
        conf = app["spec"]["sparkConf"]
        fixed = {"spark.driver.port", "spark.driver.blockManager.port", "spark.blockManager.port"}
        assert {int(conf[k]) for k in fixed} == spark_ports, app["metadata"]["name"]
    head_ports = {
        port["port"]
        for rule in policies["ray"]["spec"]["ingress"]
        for port in rule.get("ports", [])
    }
    assert head_ports == {8265}  # job API for submitters and the operator; the rest: Ray pods
    # Every pod the manifests create is selected by a policy beyond the default deny.
    for where, _ in pod_templates():
        labels = pod_labels(where)
        allowed = [n for n, p in policies.items() if _selects(p, labels)]
        assert set(allowed) - {"default-deny-all", "allow-dns"}, where


def pod_labels(where: str) -> dict[str, str]:
    """The labels a pod of pod_templates() will carry (the operators add Ray's and Spark's)."""
    file, kind_name, *part = where.split(":")
    kind, name = kind_name.split("/")
    doc = one(kind, name)
    if kind == "SparkApplication":
        return {"spark-role": part[0]}
    if kind in ("RayCluster", "RayJob"):
        if part == ["submitter"]:
            return doc["spec"]["submitterPodTemplate"]["metadata"]["labels"]
        return {"ray.io/node-type": "head" if part == ["head"] else "worker"}
    return doc["spec"]["template"]["metadata"]["labels"]


def test_each_role_has_its_own_bucket_key():
    """Spark and Ray: the lake's key; the MLflow server: the artifacts' key; nobody both."""
    uses: dict[str, set[str]] = {}
    for where, pod in pod_templates():
        for c in containers_of(pod):
            for source in c.get("envFrom", []):
                if "secretRef" in source:
                    uses.setdefault(source["secretRef"]["name"], set()).add(where.split(":")[1])
    for app in docs_of("SparkApplication"):
        refs = {v.split(":")[0] for k, v in app["spec"]["sparkConf"].items() if "secretKeyRef" in k}
        assert {r for r in refs if r.startswith("isrec-s3")} == {"isrec-s3-lake"}
    assert uses["isrec-s3-mlflow"] == {"Deployment/mlflow"}
    assert all(w.startswith(("RayCluster/", "RayJob/")) for w in uses["isrec-s3-lake"])
    assert uses["isrec-s3-admin"] == {"Job/isrec-s3-buckets"}
    assert "isrec-s3" not in uses  # the old all-buckets key is gone


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
    # The base image pinned by digest (a tag can be pushed again), a real one: 64 hex digits.
    assert re.fullmatch(r"python:3\.11[\w.-]*@sha256:[0-9a-f]{64}", instructions[0][1])
    runs = " ".join(a for w, a in instructions if w == "RUN")
    assert "openjdk-17-jre-headless" in runs
    assert "pip install --no-deps --require-hashes -r /tmp/requirements.lock" in runs
    assert re.search(r"pip install --no-deps --no-build-isolation \.(\s|$)", runs), "the project"
    assert "python -m etl.spark --fetch-jars --object-store" in runs  # Delta + S3A jars
    workdir = [a for w, a in instructions if w == "WORKDIR"]
    assert workdir == [IMAGE_ROOT]
    users = [a for w, a in instructions if w == "USER"]
    assert users and users[-1] not in ("root", "0"), "the image must run as a non-root user"
    entrypoint = json.loads(next(a for w, a in instructions if w == "ENTRYPOINT"))
    assert "/opt/entrypoint.sh" in entrypoint


def test_dockerfile_installs_the_lock_before_the_code():
    """A code change must not re-download torch: the locked stack is one layer, before any
    COPY of etl/, train/ or jobs/ (the jar step copies only the modules etl.spark needs)."""
    instructions = dockerfile_instructions()
    index = {i: (w, a) for i, (w, a) in enumerate(instructions)}
    lock_copy = next(i for i, (w, a) in index.items() if w == "COPY" and "requirements.lock" in a)
    lock_install = next(i for i, (w, a) in index.items() if w == "RUN" and "--require-hashes" in a)
    code = [
        i for i, (w, a) in index.items() if w == "COPY" and re.search(r"\b(etl|train|jobs)\b", a)
    ]
    assert lock_copy < lock_install < min(code)
    jar_step = next(i for i, (w, a) in index.items() if w == "RUN" and "--fetch-jars" in a)
    (partial,) = [i for i in code if i < jar_step]
    assert index[partial][1].split()[:-1] == [
        "etl/__init__.py",
        "etl/errors.py",
        "etl/project.py",
        "etl/storage.py",
        "etl/spark.py",
    ]
    # Those are all etl.spark imports of the project (etl.errors imports none).
    imports = set(re.findall(r"^from (etl\.\w+) import", (ROOT / "etl/spark.py").read_text(), re.M))
    assert imports == {"etl.errors", "etl.project", "etl.storage"}
    assert not re.search(r"^from (etl|train)\b", (ROOT / "etl/errors.py").read_text(), re.M)


def locked() -> dict[str, str]:
    """name -> exact version of every package in requirements.lock (each with its hashes)."""
    pins = {}
    text = LOCK.read_text()
    for match in re.finditer(r"^([A-Za-z0-9_.\-]+)==(\S+) \\\n\s+--hash=sha256:", text, re.M):
        pins[match.group(1).lower().replace("_", "-")] = match.group(2)
    assert len(pins) == len(re.findall(r"^[A-Za-z0-9]", text, re.M)), "a pin without hashes"
    return pins


def test_lock_pins_the_whole_stack():
    import tomllib

    from packaging.requirements import Requirement

    pins = locked()
    # Ray of the image = the manifests' rayVersion = the client's pin range.
    assert pins["ray"] == RAY_VERSION
    versions = {
        d["spec"].get("rayVersion") or d["spec"]["rayClusterSpec"]["rayVersion"]
        for d in docs_of("RayCluster") + docs_of("RayJob")
    }
    assert versions == {RAY_VERSION}
    # Every dependency of pyproject.toml is in the lock, at a version its range allows.
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for line in project["dependencies"]:
        req = Requirement(line)
        name = req.name.lower().replace("_", "-")
        assert name in pins, line
        assert req.specifier.contains(pins[name], prereleases=True), (line, pins[name])
    for extra in ("psycopg2-binary", "boto3", "s3fs", "torch", "pyspark", "mlflow"):
        assert extra in pins
    # torch's CUDA build: PyPI's Linux wheel of this torch links CUDA 13.0 (documented in the
    # Dockerfile and infra/README.md with the driver it needs).
    assert pins["nvidia-cuda-runtime"].startswith("13.0.")
    assert (
        "CUDA 13.0" in DOCKERFILE.read_text() and "CUDA 13.0" in (INFRA / "README.md").read_text()
    )


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


SCRIPTS = ["lib.sh", "spark.sh", "ray.sh", "mlflow.sh", "s3.sh", "all.sh"]


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
    assert_shellcheck_clean(path)


def assert_shellcheck_clean(path: Path) -> None:
    shellcheck = shutil.which("shellcheck")
    assert shellcheck, "shellcheck is not installed (.ci/run installs it from Debian's packages)"
    out = subprocess.run(
        [shellcheck, "-x", "-S", "warning", str(path)], capture_output=True, text=True, cwd=ROOT
    )
    assert out.returncode == 0, out.stdout


def test_lock_script_is_valid_bash():
    script = INFRA / "docker" / "lock.sh"
    assert os.access(script, os.X_OK)
    subprocess.run(["bash", "-n", str(script)], check=True)
    assert "requirements.lock" in script.read_text()
    assert "infra/docker/lock.sh" in LOCK.read_text().split("\n", 3)[1]  # made by it
    assert_shellcheck_clean(script)


def test_scripts_refuse_unknown_commands(tmp_path):
    env = {**os.environ, "ISREC_CLUSTER_DIR": str(tmp_path)}
    for name in ("spark.sh", "ray.sh", "mlflow.sh", "s3.sh", "all.sh"):
        out = subprocess.run(
            [str(LOCAL / name), "bogus"], capture_output=True, text=True, env=env, timeout=60
        )
        assert out.returncode == 2
        assert "usage" in out.stderr


def exports_of(out: subprocess.CompletedProcess) -> dict[str, str]:
    """The variables a script's `env` command prints (`export KEY=VALUE` lines)."""
    assert out.returncode == 0, out.stderr
    return dict(line.removeprefix("export ").split("=", 1) for line in out.stdout.splitlines())


def all_env(env: dict) -> dict[str, str]:
    return exports_of(
        subprocess.run(
            [str(LOCAL / "all.sh"), "env"], capture_output=True, text=True, env=env, timeout=60
        )
    )


def test_env_prints_client_settings(tmp_path):
    env = {**os.environ, "ISREC_CLUSTER_DIR": str(tmp_path), "ISREC_RAY_DASHBOARD_PORT": "18999"}
    exports = all_env(env)
    assert exports["ISREC_SPARK_MASTER"] == "spark://127.0.0.1:7077"
    assert exports["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:5000"
    assert exports["RAY_API_SERVER_ADDRESS"] == "http://127.0.0.1:18999"
    assert exports["RAY_AUTH_MODE"] == "token"
    assert exports["RAY_AUTH_TOKEN_PATH"] == str(tmp_path / "ray" / "auth_token")
    assert exports["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"


def test_env_on_another_address(tmp_path):
    """ISREC_BIND_HOST moves every service to another of the host's addresses; a worker host
    points at the master's and head's (the two-host test runs this for real)."""
    env = {**os.environ, "ISREC_CLUSTER_DIR": str(tmp_path), "ISREC_BIND_HOST": "10.231.0.1"}
    exports = all_env(env)
    assert exports["ISREC_SPARK_MASTER"] == "spark://10.231.0.1:7077"
    assert exports["RAY_ADDRESS"] == "10.231.0.1:6379"
    assert exports["MLFLOW_TRACKING_URI"] == "http://10.231.0.1:5000"
    assert "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" not in exports  # loopback only
    worker = {
        **env,
        "ISREC_BIND_HOST": "10.231.0.2",
        "ISREC_SPARK_MASTER_URL": "spark://10.231.0.1:7077",
        "ISREC_RAY_HEAD_ADDRESS": "10.231.0.1:6379",
    }
    exports = all_env(worker)
    assert exports["ISREC_SPARK_MASTER"] == "spark://10.231.0.1:7077"
    assert exports["RAY_API_SERVER_ADDRESS"] == "http://10.231.0.1:8265"


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
        # bounds the wait before a stop SIGKILLs what ignored SIGTERM (default 15 s)
        "ISREC_STOP_TIMEOUT": "5",
        "ISREC_MLFLOW_ADMIN_PASSWORD": "e2e-" + secrets.token_urlsafe(16),  # basic auth
    }
    return env


# Every process of the local platform, per script: the PID files infra/local writes.
SERVICES = {
    "spark": ("spark-master", "spark-worker"),
    "ray": ("ray-head", "ray-node"),
    "mlflow": ("mlflow",),
}
# `ray job submit --working-dir` uploads the repository minus what .gitignore lists (.venv,
# data, .ivy2); these are left out too (.gpu/ is a local scratch folder that only
# .git/info/exclude hides, which Ray does not read).
UPLOAD_EXCLUDES = [".git/", ".gpu/", "test-artifacts/", "tests/"]


def generate_world(raw: Path, users: int, seed: int) -> None:
    """A small synthetic Taobao world (3 days, 1 of history) for the cluster tests."""
    generated = subprocess.run(
        [sys.executable, str(ROOT / "jobs" / "generate.py"), "--out", str(raw)]
        + ["--users", str(users), "--days", "3", "--history-days", "1", "--seed", str(seed)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert generated.returncode == 0, generated.stderr[-3000:]


def recorded_services(state: Path) -> dict[int, str]:
    """PID -> start time of every process recorded by the services that came up."""
    names = [n for names in SERVICES.values() for n in names if (state / f"{n}.pids").exists()]
    return recorded(state, *names)


@pytest.mark.slow
@pytest.mark.timeout(3000)
def test_cluster_modes_end_to_end(cluster_env, tmp_path):
    """The platform on 127.0.0.1 as infra/README.md describes it: all.sh starts a Spark
    standalone master + worker, a two-node Ray cluster with token auth and an MLflow server;
    spark-submit runs jobs/etl.py on the standalone master (world -> Delta lake), `ray job
    submit` runs jobs/train.py on the Ray cluster (ESMM, 2 Ray Train workers), the run and the
    registered model land in the MLflow server; all.sh stop ends every recorded process."""
    from etl.spark import delta_jar_paths, fetch_jars
    from etl.spec import FeatureSpec

    master, master_ui, worker, worker_ui, gcs, dashboard, client, mlflow_port = free_ports(8)
    agent_base = free_ports(8, consecutive=True)[0]
    env = {
        **cluster_env,
        "ISREC_SPARK_MASTER_PORT": str(master),
        "ISREC_SPARK_MASTER_UI_PORT": str(master_ui),
        "ISREC_SPARK_WORKER_PORT": str(worker),
        "ISREC_SPARK_WORKER_UI_PORT": str(worker_ui),
        "ISREC_RAY_PORT": str(gcs),
        "ISREC_RAY_DASHBOARD_PORT": str(dashboard),
        "ISREC_RAY_CLIENT_PORT": str(client),
        "ISREC_RAY_AGENT_PORT_BASE": str(agent_base),
        "ISREC_RAY_HEAD_WORKER_PORTS": "23000-23499",
        "ISREC_RAY_NODE_WORKER_PORTS": "23500-23999",
        "ISREC_RAY_START_ATTEMPTS": "3",
        "ISREC_MLFLOW_PORT": str(mlflow_port),
    }
    state = Path(env["ISREC_CLUSTER_DIR"])
    spark_url = f"spark://127.0.0.1:{master}"
    ray_url = f"http://127.0.0.1:{dashboard}"
    mlflow_url = f"http://127.0.0.1:{mlflow_port}"
    bin_dir = Path(sys.executable).parent
    pids: dict[int, str] = {}
    try:
        # --- 1. the services, started once; a second start changes nothing -------------------
        out = run_script("all.sh", "start", env, timeout=2400)
        assert out.returncode == 0, out.stdout + out.stderr
        lines = out.stdout.strip().splitlines()
        assert {spark_url, ray_url, mlflow_url} <= set(lines), out.stdout
        pids = recorded_services(state)
        for service, names in SERVICES.items():
            assert len(recorded(state, *names)) >= len(names), service
        again = run_script("all.sh", "start", env)
        assert again.returncode == 0, again.stdout + again.stderr
        for service in SERVICES:
            assert f"[{service}] already running" in again.stdout, again.stdout
        for service in SERVICES:
            assert run_script(f"{service}.sh", "status", env).returncode == 0, service
        assert run_script("all.sh", "status", env).returncode == 0
        assert_loopback_only(pids)
        for names in SERVICES.values():  # each service listens on loopback itself
            assert_loopback_only(recorded(state, *names))

        client_env = {**env, **exports_of(run_script("all.sh", "env", env))}
        assert client_env["ISREC_SPARK_MASTER"] == spark_url
        assert client_env["RAY_API_SERVER_ADDRESS"] == ray_url
        assert client_env["MLFLOW_TRACKING_URI"] == mlflow_url

        # MLflow answers; Ray's job API wants the token (mode 600); both Ray nodes on loopback.
        assert http(f"{mlflow_url}/health") == (200, "OK")
        token_file = state / "ray" / "auth_token"
        assert Path(client_env["RAY_AUTH_TOKEN_PATH"]) == token_file
        assert oct(token_file.stat().st_mode & 0o777) == "0o600"
        token = token_file.read_text()
        assert http(f"{ray_url}/api/jobs/")[0] in (401, 403), "job API open without the token"
        assert http(f"{ray_url}/api/jobs/", token)[0] == 200
        # the state API (what a job's ray.nodes() asks; the training job below is submitted)
        code, body = http(f"{ray_url}/api/v0/nodes?limit=10", token)
        assert code == 200, body
        nodes = json.loads(body)["data"]["result"]["result"]
        alive = [n["node_ip"] for n in nodes if n["state"] == "ALIVE"]
        assert alive == ["127.0.0.1"] * 2, nodes

        # --- 2. a synthetic world, and the ETL with spark-submit on the standalone master -----
        raw, lake = tmp_path / "raw", tmp_path / "lake"
        generate_world(raw, users=200, seed=7)
        jars = delta_jar_paths() if all(p.is_file() for p in delta_jar_paths()) else fetch_jars()
        # As infra/README.md's command: no driver address, no UI switch (etl.spark fills them
        # in for a master on loopback, and only there).
        conf = {
            "spark.executor.memory": "1g",
            "spark.cores.max": "1",
            "spark.pyspark.python": sys.executable,
            "spark.sql.shuffle.partitions": "4",  # half the tasks of etl.spark's 8 (one core)
        }
        command = [str(bin_dir / "spark-submit"), "--master", client_env["ISREC_SPARK_MASTER"]]
        command += ["--driver-memory", "1g", "--jars", ",".join(map(str, jars))]
        for key, value in conf.items():
            command += ["--conf", f"{key}={value}"]
        command += [str(ROOT / "jobs" / "etl.py"), "--source", "taobao_ad"]
        command += ["--input", str(raw), "--output", str(lake)]
        etl = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=1800,
            env={k: v for k, v in client_env.items() if k != "SPARK_LOCAL_IP"},
        )
        assert etl.returncode == 0, etl.stdout[-3000:] + etl.stderr[-5000:]
        apps = list((state / "spark" / "work").glob("app-*"))
        assert apps, "the ETL ran on the standalone worker"
        spec = FeatureSpec.load(lake)
        assert (lake / "_feature_spec.json").is_file()
        assert "samples" in spec.tables
        assert (lake / "samples" / "_delta_log").is_dir()
        for split in ("train", "valid", "test"):
            assert list((lake / "samples").glob(f"split={split}/**/*.parquet")), split

        # --- 3. training with `ray job submit` on the two-node Ray cluster -----------------------
        job_id = f"isrec-e2e-{os.getpid()}-{master}"
        # A submitted job gets the cluster's environment, not the submitter's: the MLflow
        # credentials travel in its runtime env.
        credentials = {k: v for k, v in client_env.items() if k.startswith("MLFLOW_TRACKING_")}
        assert set(credentials) >= {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"}
        runtime_env = {"excludes": UPLOAD_EXCLUDES, "env_vars": credentials}
        train = [str(bin_dir / "ray"), "job", "submit", "--address", ray_url]
        train += ["--submission-id", job_id, "--working-dir", str(ROOT)]
        train += ["--runtime-env-json", json.dumps(runtime_env), "--"]
        train += ["python", "jobs/train.py", "--lake", str(lake), "--model", "esmm"]
        train += ["--param", "embedding_dim=4", "--param", "tower_hidden=8"]
        train += ["--num-workers", "2", "--epochs", "1", "--batch-size", "256"]
        train += ["--max-steps-per-epoch", "4", "--eval-batch-size", "2048", "--log-every", "0"]
        train += ["--max-failures", "0", "--storage-path", str(tmp_path / "ray_results")]
        train += ["--tracking-uri", client_env["MLFLOW_TRACKING_URI"]]
        train += ["--experiment", "isrec-e2e"]
        submitted = subprocess.run(
            train, capture_output=True, text=True, env=client_env, timeout=1800
        )
        assert submitted.returncode == 0, submitted.stdout[-6000:] + submitted.stderr[-3000:]
        code, body = http(f"{ray_url}/api/jobs/{job_id}", token)
        assert code == 200, body
        assert json.loads(body)["status"] == "SUCCEEDED", body
        code, body = http(f"{ray_url}/api/jobs/{job_id}/logs", token)
        assert code == 200, body
        job_lines = [line for line in json.loads(body)["logs"].splitlines() if line.strip()]
        result = json.loads(job_lines[-1])
        assert result["model"] == "esmm" and result["seeds"] == [0]
        metrics = result["metrics"]
        assert metrics["n_rows"] > 0
        assert 0.0 <= metrics["ctr_auc"] <= 1.0
        assert metrics["ctr_logloss"] > 0

        # --- 4. the run and the registered model in the MLflow server ---------------------------
        from mlflow import MlflowClient

        assert http(f"{mlflow_url}/api/2.0/mlflow/experiments/search?max_results=1")[0] == 401
        os.environ.update(credentials)  # this process is a client too (removed below)
        mlflow = MlflowClient(tracking_uri=mlflow_url, registry_uri=mlflow_url)
        experiment = mlflow.get_experiment_by_name("isrec-e2e")
        assert experiment is not None
        runs = mlflow.search_runs([experiment.experiment_id])
        assert runs and all(r.info.status == "FINISHED" for r in runs)
        roles = {r.data.tags.get("isrec.role"): r for r in runs}
        seed_run = roles["seed"]
        assert seed_run.data.metrics["test_ctr_auc"] == pytest.approx(metrics["ctr_auc"])
        assert set(roles) == {"comparison", "seed"}
        assert str(lake) in seed_run.data.tags["isrec.data.samples.path"]
        assert seed_run.data.tags["isrec.data.samples.version"] == str(spec.tables["samples"])
        versions = mlflow.search_model_versions("name='isrec-esmm'")
        assert len(versions) == 1
        challenger = mlflow.get_model_version_by_alias("isrec-esmm", "challenger")
        assert challenger.version == versions[0].version
        assert challenger.run_id in {r.info.run_id for r in runs}
        # Artifacts went through the server into its own store, not onto the job's disk.
        assert (state / "mlflow" / "mlflow.db").is_file()
        assert any((state / "mlflow" / "artifacts").rglob("MLmodel"))
    finally:
        for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            os.environ.pop(key, None)
        if not pids:
            pids = recorded_services(state)
        stopped = run_script("all.sh", "stop", env)
        ray_tmp = state / "ray" / "tmp"  # Ray's temp dirs live in /tmp (short socket paths)
        if ray_tmp.is_symlink():
            shutil.rmtree(ray_tmp.resolve(), ignore_errors=True)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert_gone(pids)
    for service, names in SERVICES.items():
        assert run_script(f"{service}.sh", "status", env).returncode == 3, service
        for name in names:
            assert not (state / f"{name}.pid").exists(), name
    assert run_script("all.sh", "status", env).returncode == 3
