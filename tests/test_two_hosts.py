"""Two hosts on one machine: the jobs across a real network, not over loopback (issue 15).

Two network namespaces stand for two machines: host A (10.231.0.1) and host B (10.231.0.2),
joined by a veth pair, each with its own loopback, so no process of the test listens on the
machine's own addresses. infra/local's scripts start, with ISREC_BIND_HOST set to the host's
address: on A a Spark standalone master and a Ray head, on B a Spark worker and a second Ray
node. From A, `spark-submit` runs jobs/etl.py on the standalone master, its only executor on B;
the driver's address reaches Spark only as `--conf spark.driver.host=10.231.0.1` (etl.spark
keeps it: a driver that advertised 127.0.0.1 would never see its executor register). Then
`ray job submit` runs jobs/train.py with 2 Ray Train workers, one per host (each node has one
CPU). Every service is stopped by its recorded PIDs; a finalizer that always runs ends whatever
is left in the namespaces and deletes them. The lake lives on the disk both "hosts" share.

Needs root and iproute2 (`ip netns`, veth); CI runs it (.ci/run installs iproute2).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from test_infra import UPLOAD_EXCLUDES, assert_gone, exports_of, generate_world, recorded

ROOT = Path(__file__).resolve().parent.parent
LOCAL = ROOT / "infra" / "local"
HOST_A, HOST_B = "10.231.0.1", "10.231.0.2"
SPARK_MASTER = f"spark://{HOST_A}:7077"
RAY_GCS = f"{HOST_A}:6379"
RAY_DASHBOARD = f"http://{HOST_A}:8265"
BIN = Path(sys.executable).parent

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
]


def ip(*args: str) -> None:
    out = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"ip {' '.join(args)}: {out.stderr}"


@dataclass
class Host:
    """One "machine": a network namespace, its address and its own infra/local state dir."""

    netns: str
    address: str
    state: Path
    env: dict[str, str] = field(default_factory=dict)

    def run(self, argv: list[str], timeout: int = 900, **env: str):
        """Run argv on this host (inside its namespace) with the host's environment."""
        return subprocess.run(
            ["ip", "netns", "exec", self.netns, *argv],
            capture_output=True,
            text=True,
            env={**self.env, **env},
            timeout=timeout,
        )

    def script(self, name: str, command: str, timeout: int = 900):
        return self.run([str(LOCAL / name), command], timeout=timeout)

    def get(self, url: str, token: str = "") -> tuple[int, str]:
        """HTTP GET from this host (the test itself has no route into the namespaces)."""
        code = (
            "import sys, urllib.request, urllib.error\n"
            "req = urllib.request.Request(sys.argv[1])\n"
            "if sys.argv[2]: req.add_header('Authorization', 'Bearer ' + sys.argv[2])\n"
            "try: r = urllib.request.urlopen(req, timeout=30)\n"
            "except urllib.error.HTTPError as e: r = e\n"
            "print(r.status); print(r.read().decode())\n"
        )
        out = self.run([sys.executable, "-c", code, url, token], timeout=120)
        assert out.returncode == 0, out.stderr
        status, _, body = out.stdout.partition("\n")
        return int(status), body

    def netns_inode(self) -> int:
        return os.stat(f"/run/netns/{self.netns}").st_ino


def end_namespace(netns: str) -> None:
    """SIGTERM, then SIGKILL, every process still in the namespace; then delete it."""
    if not Path(f"/run/netns/{netns}").exists():
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        out = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True)
        pids = [int(p) for p in out.stdout.split()]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 10
        while pids and time.monotonic() < deadline:
            pids = [p for p in pids if Path(f"/proc/{p}").exists()]
            time.sleep(0.2)
    subprocess.run(["ip", "netns", "delete", netns], capture_output=True, timeout=60)


@pytest.fixture
def hosts(tmp_path):
    """Hosts A and B, joined by a veth pair; torn down (services, processes, namespaces)
    whatever the test did."""
    if not shutil.which("ip"):
        pytest.fail("iproute2 (`ip`) is needed: apt-get install iproute2")
    tag = f"{os.getpid() % 100000}"
    a = Host(f"isrec{tag}a", HOST_A, tmp_path / "host-a")
    b = Host(f"isrec{tag}b", HOST_B, tmp_path / "host-b")
    veth = (f"v{tag}a", f"v{tag}b")  # interface names: 15 characters at most
    try:
        for host in (a, b):
            ip("netns", "add", host.netns)
        ip("link", "add", veth[0], "type", "veth", "peer", "name", veth[1])
        for host, end in zip((a, b), veth, strict=True):
            ip("link", "set", end, "netns", host.netns)
            ip("-n", host.netns, "addr", "add", f"{host.address}/24", "dev", end)
            ip("-n", host.netns, "link", "set", end, "up")
            ip("-n", host.netns, "link", "set", "lo", "up")
            host.env = {
                **os.environ,
                "ISREC_CLUSTER_DIR": str(host.state),
                "ISREC_BIND_HOST": host.address,
                "ISREC_PYTHON": sys.executable,
                "ISREC_START_TIMEOUT": "300",
                "ISREC_STOP_TIMEOUT": "10",
                "PYSPARK_PYTHON": sys.executable,
            }
            host.env.pop("SPARK_LOCAL_IP", None)
        a.env |= {"ISREC_SPARK_ROLES": "master", "ISREC_RAY_ROLES": "head"}
        b.env |= {
            "ISREC_SPARK_ROLES": "worker",
            "ISREC_SPARK_MASTER_URL": SPARK_MASTER,
            "ISREC_RAY_ROLES": "node",
            "ISREC_RAY_HEAD_ADDRESS": RAY_GCS,
        }
        for host in (a, b):
            host.env |= {"ISREC_RAY_HEAD_CPUS": "1", "ISREC_RAY_NODE_CPUS": "1"}
        yield a, b
    finally:
        for host in (b, a):
            if host.env:
                for name in ("ray.sh", "spark.sh"):
                    host.script(name, "stop", timeout=120)
            ray_tmp = host.state / "ray" / "tmp"  # Ray's temp dirs live in /tmp
            if ray_tmp.is_symlink():
                shutil.rmtree(ray_tmp.resolve(), ignore_errors=True)
        for host in (a, b):
            end_namespace(host.netns)
        if Path(f"/sys/class/net/{veth[0]}").exists():
            subprocess.run(["ip", "link", "delete", veth[0]], capture_output=True)


def assert_on_host(host: Host, pids: dict[int, str]) -> None:
    """Every process of the service runs inside the host's namespace."""
    assert pids
    inode = host.netns_inode()
    outside = [p for p in pids if os.stat(f"/proc/{p}/ns/net").st_ino != inode]
    assert not outside, f"{host.netns}: processes outside the namespace: {outside}"


def start(host: Host, name: str, services: tuple[str, ...]) -> dict[int, str]:
    out = host.script(name, "start")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    pids = recorded(host.state, *services)
    assert_on_host(host, pids)
    return pids


def stop(host: Host, name: str, pids: dict[int, str]) -> None:
    out = host.script(name, "stop", timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert_gone(pids)
    assert host.script(name, "status").returncode == 3


@pytest.mark.timeout(900)
def test_jobs_across_two_hosts(hosts, tmp_path):
    from etl.spark import delta_jar_paths, fetch_jars
    from etl.spec import FeatureSpec

    a, b = hosts
    t0 = time.monotonic()
    raw, lake = tmp_path / "raw", tmp_path / "lake"
    generate_world(raw, users=60, seed=3)

    # --- Spark: master on A, worker on B; the ETL's driver on A, its executor on B -----------
    master = start(a, "spark.sh", ("spark-master",))
    worker = start(b, "spark.sh", ("spark-worker",))
    status, body = a.get(f"http://{HOST_A}:8080/json/")
    assert status == 200
    assert [(w["host"], w["state"]) for w in json.loads(body)["workers"]] == [(HOST_B, "ALIVE")]

    jars = delta_jar_paths() if all(p.is_file() for p in delta_jar_paths()) else fetch_jars()
    submit = [str(BIN / "spark-submit"), "--master", SPARK_MASTER, "--driver-memory", "1g"]
    submit += ["--jars", ",".join(map(str, jars))]
    # What a user passes to reach executors on other hosts; nothing else names the driver.
    conf = {
        "spark.driver.host": HOST_A,
        "spark.sql.shuffle.partitions": "4",
        "spark.executor.memory": "1g",
        "spark.cores.max": "1",
        "spark.ui.enabled": "false",
        "spark.pyspark.python": sys.executable,
    }
    for key, value in conf.items():
        submit += ["--conf", f"{key}={value}"]
    submit += [str(ROOT / "jobs" / "etl.py"), "--source", "taobao_ad"]
    submit += ["--input", str(raw), "--output", str(lake)]
    etl = a.run(submit, timeout=600)
    assert etl.returncode == 0, etl.stdout[-3000:] + etl.stderr[-5000:]

    # The executor ran on B and reached the driver at A's address.
    executor_logs = list((b.state / "spark" / "work").glob("app-*/*/stderr"))
    assert executor_logs, "no executor ran on host B"
    assert any(
        f"Connecting to driver: spark://CoarseGrainedScheduler@{HOST_A}:" in log.read_text()
        for log in executor_logs
    ), executor_logs[0].read_text()[-3000:]
    spec = FeatureSpec.load(lake)
    assert "samples" in spec.tables
    for split in ("train", "valid", "test"):
        assert list((lake / "samples").glob(f"split={split}/**/*.parquet")), split
    stop(b, "spark.sh", worker)
    stop(a, "spark.sh", master)
    print(f"world, Spark and the ETL: {time.monotonic() - t0:.0f} s")

    # --- Ray: head on A, a node on B; 2 Ray Train workers, one per host ------------------------
    head = start(a, "ray.sh", ("ray-head",))
    token = (a.state / "ray" / "auth_token").read_text()
    token_b = b.state / "ray" / "auth_token"  # the head's token, copied to the other host
    token_b.parent.mkdir(parents=True, exist_ok=True)
    token_b.write_text(token)
    token_b.chmod(0o600)
    node = start(b, "ray.sh", ("ray-node",))
    print(f"Ray up: {time.monotonic() - t0:.0f} s")

    client = {**a.env, **exports_of(a.script("ray.sh", "env"))}
    assert client["RAY_API_SERVER_ADDRESS"] == RAY_DASHBOARD
    assert "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" not in client  # loopback only
    assert a.get(f"{RAY_DASHBOARD}/api/jobs/")[0] in (401, 403), "job API open without token"
    status, body = a.get(f"{RAY_DASHBOARD}/api/v0/nodes?limit=10", token)
    assert status == 200, body
    nodes = json.loads(body)["data"]["result"]["result"]
    ips = {n["node_id"]: n["node_ip"] for n in nodes if n["state"] == "ALIVE"}
    assert sorted(ips.values()) == [HOST_A, HOST_B]

    job_id = f"isrec-two-hosts-{os.getpid()}"
    train = [str(BIN / "ray"), "job", "submit", "--address", RAY_DASHBOARD]
    train += ["--submission-id", job_id, "--working-dir", str(ROOT)]
    train += ["--runtime-env-json", json.dumps({"excludes": UPLOAD_EXCLUDES}), "--"]
    train += ["python", "jobs/train.py", "--lake", str(lake), "--model", "esmm"]
    train += ["--param", "embedding_dim=4", "--param", "tower_hidden=8"]
    train += ["--num-workers", "2", "--cpus-per-worker", "1", "--epochs", "1"]
    train += ["--batch-size", "256", "--max-steps-per-epoch", "3", "--eval-batch-size", "2048"]
    train += ["--log-every", "0", "--max-failures", "0", "--no-track"]
    train += ["--storage-path", str(tmp_path / "ray_results")]
    submitted = subprocess.run(
        ["ip", "netns", "exec", a.netns, *train],
        capture_output=True,
        text=True,
        env=client,
        timeout=600,
    )
    assert submitted.returncode == 0, submitted.stdout[-6000:] + submitted.stderr[-3000:]
    status, body = a.get(f"{RAY_DASHBOARD}/api/jobs/{job_id}", token)
    assert json.loads(body)["status"] == "SUCCEEDED", body
    status, body = a.get(f"{RAY_DASHBOARD}/api/jobs/{job_id}/logs", token)
    # The metrics line is the driver's last; lines of the workers on B may arrive after it.
    job_lines = [x for x in json.loads(body)["logs"].splitlines() if x.startswith("{")]
    result = json.loads(job_lines[-1])
    assert result["model"] == "esmm" and result["seeds"] == [0]
    assert result["metrics"]["n_rows"] > 0
    assert 0.0 <= result["metrics"]["ctr_auc"] <= 1.0

    status, body = a.get(f"{RAY_DASHBOARD}/api/v0/actors?limit=1000&detail=true", token)
    assert status == 200, body
    actors = json.loads(body)["data"]["result"]["result"]
    workers = [ips.get(x["node_id"]) for x in actors if x["class_name"] == "RayTrainWorker"]
    assert sorted(workers) == [HOST_A, HOST_B], actors

    stop(b, "ray.sh", node)
    stop(a, "ray.sh", head)
    print(f"all: {time.monotonic() - t0:.0f} s")
