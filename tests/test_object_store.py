"""Lakes and Ray storage on an S3-compatible object store (SeaweedFS from infra/local/s3.sh).

The store is real: a SeaweedFS server on 127.0.0.1 with one access key enforced. `.ci/run`
builds it (`infra/local/s3.sh install`); without the binary these tests fail and say how to get
it. The end-to-end test runs the documented commands: spark-submit jobs/etl.py into s3a://,
jobs/train.py from s3:// with Ray Train storage in the bucket, tracking and registering in MLflow.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from helpers_mlflow import client_for, mlflow_env

from etl import storage
from etl.spark import jar_paths, s3a_conf
from tests.conftest import PROJECT_ROOT

S3_SCRIPT = PROJECT_ROOT / "infra" / "local" / "s3.sh"
BUCKET = "isrec"


def _free_base_port() -> int:
    """A port P with P and P + 10000 free (SeaweedFS puts gRPC at port + 10000)."""
    for _ in range(200):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port + 10000 >= 65536:
            continue
        try:
            with socket.socket() as grpc:
                grpc.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair")


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for its reaper counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _s3(command: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(S3_SCRIPT), command], env=env, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def s3_env(tmp_path_factory) -> dict[str, str]:
    """Start SeaweedFS, yield the client environment, stop it by its PID file."""
    state = tmp_path_factory.mktemp("s3-cluster")
    # SeaweedFS often ignores SIGTERM (seen with a client connected, and right after start)
    # until stop's SIGKILL: after 3 s here, not the default 15 s (the module's teardown).
    env = dict(
        os.environ, ISREC_CLUSTER_DIR=str(state), ISREC_S3_BUCKETS=BUCKET, ISREC_STOP_TIMEOUT="3"
    )
    ports = set()
    for name in ("PORT", "MASTER_PORT", "VOLUME_PORT", "FILER_PORT"):
        port = _free_base_port()
        while port in ports:
            port = _free_base_port()
        ports.add(port)
        env[f"ISREC_S3_{name}"] = str(port)
    started = _s3("start", env)
    if started.returncode != 0:
        pytest.fail(
            "SeaweedFS did not start (build it once with `infra/local/s3.sh install`):\n"
            + started.stdout[-2000:]
            + started.stderr[-2000:]
        )
    exports = dict(
        line.removeprefix("export ").split("=", 1)
        for line in _s3("env", env).stdout.split("\n")
        if line.startswith("export ")
    )
    pid = int((state / "s3.pid").read_text().split()[0])
    try:
        yield env | exports | {"ISREC_S3_PID": str(pid)}
    finally:
        stopped = _s3("stop", env)
        assert stopped.returncode == 0, stopped.stderr
        assert not _alive(pid), "SeaweedFS still running after stop"


@pytest.fixture
def s3_client_env(s3_env, monkeypatch) -> dict[str, str]:
    """This process as an S3 client of the test store (what `eval $(s3.sh env)` sets)."""
    for key in ("AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"):
        monkeypatch.setenv(key, s3_env[key])
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    return s3_env


# --- pure helpers (no store) ----------------------------------------------------------------------
def test_uri_helpers():
    assert (
        storage.join("s3a://b/lake/", "samples", "_delta_log") == "s3a://b/lake/samples/_delta_log"
    )
    assert storage.join("/tmp/lake", "samples") == "/tmp/lake/samples"
    assert storage.spark_uri("s3://b/lake") == "s3a://b/lake"
    assert storage.spark_uri("/tmp/lake") == "/tmp/lake"
    assert storage.arrow_uri("s3a://b/x.parquet") == "s3://b/x.parquet"
    assert storage.arrow_uri("file:///tmp/x") == "file:///tmp/x"
    assert storage.arrow_uri("rel/x").startswith("file:///")
    assert storage.parent_and_name("s3a://b/lake/scores") == ("s3a://b/lake", "scores")
    assert storage.parent_and_name("/tmp/lake/scores") == ("/tmp/lake", "scores")
    assert not storage.is_uri("file:///tmp/x") and storage.is_uri("gs://b/x")


def test_s3a_jars_match_the_hadoop_of_pyspark():
    import pyspark

    from etl.spark import HADOOP_VERSION, S3A_JAR_NAMES

    bundled = Path(pyspark.__file__).parent / "jars" / f"hadoop-client-api-{HADOOP_VERSION}.jar"
    assert bundled.is_file(), f"pyspark no longer ships Hadoop {HADOOP_VERSION}: update S3A jars"
    assert S3A_JAR_NAMES[0] == f"org.apache.hadoop_hadoop-aws-{HADOOP_VERSION}.jar"


def test_s3a_conf_follows_the_environment(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9000")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    conf = s3a_conf()
    assert conf["spark.hadoop.fs.s3a.endpoint"] == "http://127.0.0.1:9000"
    assert conf["spark.hadoop.fs.s3a.path.style.access"] == "true"
    assert conf["spark.hadoop.fs.s3a.connection.ssl.enabled"] == "false"
    assert conf["spark.hadoop.fs.s3a.endpoint.region"] == "eu-west-1"
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3")
    monkeypatch.delenv("AWS_REGION")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    assert s3a_conf() == {}  # plain AWS: S3A's own defaults


# --- the store ------------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["local", "s3", "s3a"])
def test_storage_round_trip(where, s3_client_env, tmp_path):
    base = str(tmp_path) if where == "local" else f"{where}://{BUCKET}/rt-{uuid.uuid4().hex[:8]}"
    spec_file = storage.join(base, "lake", "_feature_spec.json")
    assert not storage.is_dir(storage.join(base, "lake"))
    with pytest.raises(FileNotFoundError):
        storage.read_text(spec_file)
    storage.write_text(spec_file, '{"a": 1}')
    storage.write_text(storage.join(base, "lake", "t", "part-0.txt"), "x")
    assert storage.read_text(spec_file) == '{"a": 1}'
    assert storage.is_file(spec_file) and not storage.is_file(storage.join(base, "nope"))
    assert storage.is_dir(storage.join(base, "lake"))
    assert storage.mtime_ns(spec_file) > 0
    lake = storage.join(base, "lake")
    assert storage.list_dir(lake) == [spec_file]
    assert storage.list_dir(lake, recursive=True) == sorted(
        [spec_file, storage.join(lake, "t", "part-0.txt")]
    )
    copy = storage.localize(storage.join(lake, "t"), tmp_path / "copy")
    assert (Path(copy) / "part-0.txt").read_text() == "x"


def test_store_listens_on_loopback_only(s3_env):
    import psutil

    proc = psutil.Process(int(s3_env["ISREC_S3_PID"]))
    listening = [c.laddr for c in proc.net_connections("inet") if c.status == psutil.CONN_LISTEN]
    ports = {a.port for a in listening}
    assert int(s3_env["ISREC_S3_PORT"]) in ports
    assert listening and {a.ip for a in listening} == {"127.0.0.1"}, listening


def test_wrong_credentials_are_refused(s3_client_env, monkeypatch):
    path = f"s3://{BUCKET}/creds-{uuid.uuid4().hex[:8]}.txt"
    storage.write_text(path, "secret")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-key")
    with pytest.raises(OSError, match="ACCESS_DENIED|AccessDenied|403"):
        storage.read_text(path)


def test_training_rejects_a_missing_lake_in_one_line(s3_client_env):
    from train.preflight import ConfigError, preflight
    from train.train_config import TrainConfig

    lake = f"s3://{BUCKET}/no-such-lake-{uuid.uuid4().hex[:8]}"
    with pytest.raises(ConfigError, match="does not exist") as err:
        preflight(TrainConfig(lake=lake, model="esmm"))
    assert "\n" not in str(err.value)


@pytest.mark.slow
def test_lake_and_checkpoints_on_object_store(s3_client_env, tmp_path):
    """spark-submit ETL into s3a://, both loaders read the same rows from s3://, and
    jobs/train.py with Ray storage in the bucket registers a model. (That a rerun adds no rows
    is tested on local paths, tests/test_etl_pipeline.py: the Delta commits are the same code
    on s3a://, and a second spark-submit here cost a quarter of this test.)"""
    env = s3_client_env | {
        "PYSPARK_PYTHON": sys.executable,
        "PYSPARK_DRIVER_PYTHON": sys.executable,
    }
    prefix = f"{BUCKET}/e2e-{uuid.uuid4().hex[:8]}"
    world = tmp_path / "world"
    gen = [sys.executable, str(PROJECT_ROOT / "jobs" / "generate.py"), "--out", str(world)]
    subprocess.run(gen + ["--users", "120", "--log-level", "WARNING"], check=True, timeout=300)

    lake = f"s3a://{prefix}/lake"
    etl = _spark_submit_etl(world, lake, env)
    assert etl.returncode == 0, etl.stderr[-4000:]
    first = _samples_count(etl.stdout)
    assert first > 0

    _check_loaders_agree(f"s3://{prefix}/lake", first)

    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    train = [
        sys.executable,
        str(PROJECT_ROOT / "jobs" / "train.py"),
        "--lake",
        f"s3://{prefix}/lake",
    ]
    train += ["--model", "esmm", "--epochs", "1", "--num-workers", "1", "--batch-size", "256"]
    train += ["--storage-path", f"s3://{prefix}/ray", "--tracking-uri", tracking, "--register"]
    done = subprocess.run(
        train, env=env | mlflow_env(tracking), capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    run = result["runs"][0]
    assert run["best_checkpoint"].startswith(f"s3://{prefix}/ray/")
    assert storage.is_file(storage.join(run["best_checkpoint"], "model.pt"))
    assert storage.is_file(run["predictions"])
    assert result["metrics"]["n_rows"] > 0

    client = client_for(tracking)
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        "params.`data.lake` != ''",
    )
    assert runs, "no tracked run"
    assert runs[0].data.params["data.lake"] == f"s3://{prefix}/lake"
    assert runs[0].data.tags["isrec.checkpoint"] == run["best_checkpoint"]
    assert client.search_model_versions("name = 'isrec-esmm'"), "no registered version"


def _spark_submit_etl(world: Path, lake: str, env: dict) -> subprocess.CompletedProcess:
    submit = PROJECT_ROOT / ".venv" / "bin" / "spark-submit"
    cmd = [str(submit) if submit.exists() else "spark-submit", "--master", "local[2]"]
    cmd += ["--jars", ",".join(str(p) for p in jar_paths(object_store=True))]
    cmd += ["--conf", "spark.sql.shuffle.partitions=4", str(PROJECT_ROOT / "jobs" / "etl.py")]
    cmd += ["--source", "taobao_ad", "--input", str(world), "--output", lake]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)


def _samples_count(summary: str) -> int:
    line = next(x for x in summary.splitlines() if x.strip().startswith("table samples"))
    return int(line.split("rows")[1].split()[0].replace(",", ""))


def _check_loaders_agree(lake: str, samples_rows: int) -> None:
    """Both backends read the same rows of every split from the bucket, and all splits
    together are the samples table the ETL reported."""
    from etl.delta_log import snapshot_files
    from etl.spec import FeatureSpec
    from train.data import make_loader

    spec = FeatureSpec.load(lake)
    total = 0
    for split in ("train", "valid", "test"):
        files = snapshot_files(lake, split, spec)
        assert files and all(f.startswith("s3://") for f in files)
        ids = {}
        for backend in ("petastorm", "pyarrow"):
            loader = make_loader(spec, files, backend, batch_size=64, shuffle=False)
            ids[backend] = sorted(int(i) for batch in loader for i in batch["impression_id"])
        assert ids["petastorm"] == ids["pyarrow"]
        assert len(ids["pyarrow"]) == len(set(ids["pyarrow"])) > 0
        total += len(ids["pyarrow"])
    assert total == samples_rows
