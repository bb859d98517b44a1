"""The local MLflow tracking server runs MLflow's basic-auth app (infra/local/mlflow.sh).

The real server is started by the project's script on 127.0.0.1 and a free port, with the admin
password from ISREC_MLFLOW_ADMIN_PASSWORD (no default anywhere), and stopped by its recorded
PID (``mlflow.sh stop``). Without credentials the REST API answers 401 and a job exits 2 with
one line; with them a tiny ``jobs/train.py`` run logs its run and registered model there.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers_mlflow import free_port
from helpers_samples import shared_lake

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "infra" / "local" / "mlflow.sh"
SEARCH = "/api/2.0/mlflow/experiments/search?max_results=1"


@dataclass(frozen=True)
class Server:
    url: str
    password: str
    state: Path
    env: dict[str, str]  # the script's environment (ISREC_CLUSTER_DIR, port, password)

    def client_env(self, credentials: bool = False) -> dict[str, str]:
        """A client's environment: the exports of ``mlflow.sh env``, or no credentials."""
        out = subprocess.run(
            [str(SCRIPT), "env"], env=self.env, capture_output=True, text=True, check=True
        )
        exports = dict(x.removeprefix("export ").split("=", 1) for x in out.stdout.splitlines())
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING_")}
        if not credentials:
            return {**env, "MLFLOW_TRACKING_URI": self.url}
        return {**env, **exports}


def script(command: str, env: dict[str, str], timeout: float = 900):
    return subprocess.run(
        [str(SCRIPT), command], env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
    state = tmp_path_factory.mktemp("mlflow-auth")
    port = free_port()
    password = secrets.token_urlsafe(18)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "ISREC_MLFLOW"))}
    env |= {"ISREC_CLUSTER_DIR": str(state), "ISREC_MLFLOW_PORT": str(port)}
    env |= {"ISREC_START_TIMEOUT": "600", "ISREC_MLFLOW_ADMIN_PASSWORD": password}
    started = script("start", env)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        yield Server(f"http://127.0.0.1:{port}", password, state, env)
    finally:
        stopped = script("stop", env, timeout=120)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert not (state / "mlflow.pid").exists()


def status_of(url: str, auth: tuple[str, str] | None = None) -> int:
    request = urllib.request.Request(url)
    if auth:
        token = base64.b64encode(":".join(auth).encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_start_refuses_without_a_strong_admin_password(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("ISREC_MLFLOW")}
    env |= {"ISREC_CLUSTER_DIR": str(tmp_path), "ISREC_MLFLOW_PORT": str(free_port())}
    for password, words in ((None, "set ISREC_MLFLOW_ADMIN_PASSWORD"), ("short", "12")):
        run_env = env if password is None else {**env, "ISREC_MLFLOW_ADMIN_PASSWORD": password}
        out = script("start", run_env, timeout=60)
        assert out.returncode == 1 and words in out.stderr, out.stdout + out.stderr
        assert not (tmp_path / "mlflow.pid").exists()  # nothing was started
    # MLflow's old default password is nowhere in what the project ships
    for path in (SCRIPT, ROOT / "infra" / "k8s" / "mlflow.yaml"):
        assert "password1234" not in path.read_text()


def test_unauthenticated_requests_get_401(server):
    assert status_of(f"{server.url}/health") == 200  # the probes need no credentials
    assert status_of(server.url + SEARCH) == 401
    assert status_of(server.url + SEARCH, ("admin", "wrong-password-123")) == 401
    assert status_of(server.url + SEARCH, ("admin", server.password)) == 200
    ini = server.state / "mlflow" / "basic_auth.ini"
    assert oct(ini.stat().st_mode & 0o777) == "0o600"
    assert server.password not in ini.read_text()  # the password stays in the environment
    assert str(server.state) in ini.read_text()  # its user store is in the state dir


def test_jobs_without_credentials_fail_in_one_line(server):
    cmd = [sys.executable, str(ROOT / "jobs" / "promote.py"), "--model-name", "isrec-esmm"]
    cmd += ["--tracking-uri", server.url]
    done = subprocess.run(cmd, capture_output=True, text=True, env=server.client_env(), timeout=300)
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.strip().count("\n") == 0 and "401" in done.stderr, done.stderr


def test_train_with_credentials_logs_to_the_server(server, spark, tmp_path_factory, tmp_path):
    from mlflow import MlflowClient

    lake, _ = shared_lake(spark, tmp_path_factory.getbasetemp())
    cmd = [sys.executable, str(ROOT / "jobs" / "train.py"), "--lake", str(lake)]
    cmd += ["--model", "esmm", "--epochs", "1", "--num-workers", "1", "--loader", "pyarrow"]
    cmd += ["--max-steps-per-epoch", "2", "--log-every", "0", "--max-failures", "0"]
    cmd += ["--storage-path", str(tmp_path / "ray"), "--name", "auth-run"]
    cmd += ["--tracking-uri", server.url, "--experiment", "isrec-auth"]
    env = server.client_env(credentials=True)
    assert env["MLFLOW_TRACKING_USERNAME"] == "admin"
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1200, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    # the local Ray's setup hook silences Ray Train's once-a-second state-API warning
    assert "Failed to query Ray Train Controller" not in done.stderr, done.stderr[-4000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result, done.stdout[-2000:]
    os.environ["MLFLOW_TRACKING_USERNAME"] = "admin"
    os.environ["MLFLOW_TRACKING_PASSWORD"] = server.password
    try:
        client = MlflowClient(tracking_uri=server.url, registry_uri=server.url)
        experiment = client.get_experiment_by_name("isrec-auth")
        runs = client.search_runs([experiment.experiment_id])
        assert runs and all(r.info.status == "FINISHED" for r in runs)
        assert client.get_model_version_by_alias("isrec-esmm", "challenger").version
    finally:
        del os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]


def test_k8s_server_reads_its_credentials_from_secrets(tmp_path, monkeypatch):
    """The Deployment runs the basic-auth app with the admin password and CSRF key from Secret
    mlflow-auth; the auth-config initContainer's script writes an ini MLflow reads, whose user
    store is the server's PostgreSQL database."""
    import yaml

    docs = list(yaml.safe_load_all((ROOT / "infra" / "k8s" / "mlflow.yaml").read_text()))
    (deployment,) = [
        d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "mlflow"
    ]
    pod = deployment["spec"]["template"]["spec"]
    server = pod["containers"][0]
    assert "--app-name=basic-auth" in server["args"]
    env = {e["name"]: e for e in server["env"]}
    for key in ("MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"):
        assert env[key]["valueFrom"]["secretKeyRef"] == {"name": "mlflow-auth", "key": key}
    examples = yaml.safe_load_all((ROOT / "infra" / "k8s" / "secrets.example.yaml").read_text())
    secrets_by_name = {d["metadata"]["name"]: d["stringData"] for d in examples}
    assert len(secrets_by_name["mlflow-auth"]["MLFLOW_AUTH_ADMIN_PASSWORD"]) < 12  # refused
    assert set(secrets_by_name["isrec-mlflow-client"]) == {
        "MLFLOW_TRACKING_USERNAME",
        "MLFLOW_TRACKING_PASSWORD",
    }
    (init,) = [c for c in pod["initContainers"] if c["name"] == "auth-config"]
    ini_path = env["MLFLOW_AUTH_CONFIG_PATH"]["value"]
    mount = next(m for m in init["volumeMounts"] if ini_path.startswith(m["mountPath"]))
    assert any(m["name"] == mount["name"] for m in server["volumeMounts"])
    folder = tmp_path / "auth"
    folder.mkdir()
    values = {"POSTGRES_USER": "u", "POSTGRES_PASSWORD": "p-1", "POSTGRES_DB": "d"}
    values["MLFLOW_AUTH_ADMIN_USERNAME"] = "boss"
    script_text = init["args"][0].replace(mount["mountPath"], str(folder))
    subprocess.run([*init["command"], script_text], env={**os.environ, **values}, check=True)
    ini = folder / Path(ini_path).name
    assert oct(ini.stat().st_mode & 0o777) == "0o600"
    monkeypatch.setenv("MLFLOW_AUTH_CONFIG_PATH", str(ini))
    monkeypatch.delenv("MLFLOW_AUTH_ADMIN_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_AUTH_ADMIN_PASSWORD", raising=False)
    from mlflow.server.auth.config import read_auth_config

    config = read_auth_config()
    backend = next(a for a in server["args"] if a.startswith("--backend-store-uri="))
    expected = backend.split("=", 1)[1]
    for key, value in values.items():
        expected = expected.replace(f"$({key})", value)
    assert config.database_uri == expected
    assert (config.admin_username, config.admin_password) == ("boss", None)
