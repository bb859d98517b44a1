"""Who decides a Spark setting: under spark-submit what the user passed wins (issue 15).

etl.spark.get_spark used to merge its laptop settings (driver on 127.0.0.1, 8 shuffle
partitions, UI off) over whatever spark-submit had set, so a driver on a cluster advertised
127.0.0.1 to executors on other hosts and the manifests' 64 shuffle partitions became 8. Now the
laptop settings only fill in what a submission left out, and only when Spark runs on this
machine alone. The first tests run a real spark-submit of a tiny script that records the conf
its session sees; the others check the rule (``session_conf``) for cluster masters, including
the SparkApplications' own sparkConf. tests/test_two_hosts.py runs it across two hosts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from etl.spark import (
    DELTA_CONF,
    LOCAL_CONF,
    LOOPBACK_CONF,
    delta_jar_paths,
    fetch_jars,
    runs_on_this_machine,
    session_conf,
)

ROOT = Path(__file__).resolve().parent.parent
KEYS = [
    "spark.master",
    "spark.sql.shuffle.partitions",
    "spark.driver.host",
    "spark.ui.enabled",
    "spark.sql.session.timeZone",
    "spark.sql.extensions",
    "spark.sql.catalog.spark_catalog",
]
PROBE = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, sys.argv[1])
    from etl.spark import get_spark

    spark = get_spark("isrec-conf-probe")
    conf = spark.sparkContext.getConf()
    seen = {key: conf.get(key, None) for key in json.loads(sys.argv[2])}
    seen["session shuffle partitions"] = spark.conf.get("spark.sql.shuffle.partitions")
    seen["rows"] = spark.range(3).count()
    print("CONF " + json.dumps(seen))
    spark.stop()
    """
)


def submit_probe(tmp_path: Path, *options: str) -> dict:
    """spark-submit the probe script with ``options``; the conf its session saw."""
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    jars = delta_jar_paths() if all(p.is_file() for p in delta_jar_paths()) else fetch_jars()
    bin_dir = Path(sys.executable).parent
    command = [str(bin_dir / "spark-submit"), "--master", "local[1]", "--driver-memory", "1g"]
    command += ["--jars", ",".join(map(str, jars)), *options, str(script), str(ROOT)]
    command.append(json.dumps(KEYS))
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable}
    env.pop("SPARK_LOCAL_IP", None)
    out = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    (line,) = [x for x in out.stdout.splitlines() if x.startswith("CONF ")]
    return json.loads(line.removeprefix("CONF "))


@pytest.mark.timeout(900)
def test_spark_submit_conf_wins(tmp_path):
    """--conf values reach the job unchanged; what was not passed is filled in (local master)."""
    seen = submit_probe(
        tmp_path,
        "--conf",
        "spark.sql.shuffle.partitions=5",
        # Any 127.x address is bindable on Linux: a driver host other than get_spark's default.
        "--conf",
        "spark.driver.host=127.0.0.2",
        "--conf",
        f"spark.sql.extensions={DELTA_CONF['spark.sql.extensions']}",
    )
    assert seen["spark.sql.shuffle.partitions"] == "5"
    assert seen["session shuffle partitions"] == "5"
    assert seen["spark.driver.host"] == "127.0.0.2"
    assert seen["rows"] == 3  # the driver really runs on that address
    # Left out of the submission, so filled in: local master -> the laptop settings.
    assert seen["spark.ui.enabled"] == "false"
    assert seen["spark.sql.session.timeZone"] == "UTC"
    assert seen["spark.sql.catalog.spark_catalog"] == DELTA_CONF["spark.sql.catalog.spark_catalog"]


@pytest.mark.timeout(900)
def test_spark_submit_without_conf_gets_the_local_defaults(tmp_path):
    seen = submit_probe(tmp_path)
    assert seen["spark.master"] == "local[1]"
    assert seen["spark.sql.shuffle.partitions"] == LOCAL_CONF["spark.sql.shuffle.partitions"]
    assert seen["spark.driver.host"] == "127.0.0.1"
    assert seen["spark.ui.enabled"] == "false"
    for key, value in DELTA_CONF.items():
        assert seen[key] == value


@pytest.mark.parametrize(
    ("master", "local"),
    [
        ("local", True),
        ("local[2]", True),
        ("local[*]", True),
        ("local-cluster[2,1,1024]", True),
        ("spark://127.0.0.1:7077", True),
        ("spark://localhost:7077", True),
        ("spark://[::1]:7077", True),
        ("spark://10.231.0.1:7077", False),
        ("spark://127.0.0.1:7077,10.0.0.2:7077", False),
        ("spark://master.example:7077", False),
        ("k8s://https://kubernetes.default.svc:443", False),
        ("yarn", False),
    ],
)
def test_which_masters_run_on_this_machine(master, local):
    assert runs_on_this_machine(master) is local


def test_cluster_master_gets_no_laptop_settings():
    submitted = {
        "spark.master": "spark://10.231.0.1:7077",
        "spark.driver.host": "10.231.0.1",
        "spark.sql.shuffle.partitions": "5",
        "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension,com.example.Other",
    }
    conf = session_conf(submitted["spark.master"], submitted, env={})
    assert not set(conf) & (set(LOCAL_CONF) | set(LOOPBACK_CONF) | set(submitted))
    assert conf["spark.sql.catalog.spark_catalog"] == DELTA_CONF["spark.sql.catalog.spark_catalog"]
    assert conf["spark.sql.session.timeZone"] == "UTC"
    # The project starting Spark itself against a remote master: no loopback driver either.
    own = session_conf("spark://10.231.0.1:7077", None, env={})
    assert not set(own) & (set(LOCAL_CONF) | set(LOOPBACK_CONF))
    # On this machine alone, the laptop settings; SPARK_LOCAL_IP names the driver's address.
    assert session_conf("local[2]", None, env={})["spark.driver.host"] == "127.0.0.1"
    assert "spark.driver.host" not in session_conf(
        "local[2]", None, env={"SPARK_LOCAL_IP": "127.0.0.3"}
    )
    assert (
        session_conf("local[2]", None, {"spark.ui.enabled": "true"}, env={})["spark.ui.enabled"]
        == "true"
    )


@pytest.mark.parametrize("name", ["spark-etl.yaml", "spark-score.yaml"])
def test_spark_applications_keep_their_settings(name):
    """The driver pod's spark-submit carries the SparkApplication's sparkConf: none survives
    being replaced (the old bug turned spark-etl's 64 shuffle partitions into 8)."""
    app = yaml.safe_load((ROOT / "infra" / "k8s" / "jobs" / name).read_text())
    master = "k8s://https://kubernetes.default.svc:443"
    submitted = {"spark.master": master, **app["spec"]["sparkConf"]}
    conf = session_conf(submitted["spark.master"], submitted, env={})
    assert not set(conf) & set(submitted)
    assert not set(conf) & (set(LOCAL_CONF) | set(LOOPBACK_CONF))
