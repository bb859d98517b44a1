"""SparkSession builder with Delta Lake configured from real Delta jars.

The jars (delta-spark_2.12 and delta-storage) are resolved once from Maven Central by Spark's
own resolver into a project-local Ivy folder (``.ivy2/``) and then used from there through
``spark.jars``, so later runs need no network. Under ``spark-submit`` pass them yourself with
``--packages`` or ``--jars`` (see README); the builder then only fills in the settings the
submission left out (``session_conf``): what spark-submit was given always wins.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import sys
from collections.abc import Mapping
from importlib.metadata import version
from pathlib import Path

from pyspark.sql import SparkSession

from etl.errors import SetupError
from etl.project import PROJECT_ROOT
from etl.storage import s3_endpoint, s3_region

log = logging.getLogger(__name__)

DELTA_VERSION = version("delta-spark")
SCALA_BINARY = "2.12"
DELTA_PACKAGE = f"io.delta:delta-spark_{SCALA_BINARY}:{DELTA_VERSION}"
DELTA_JAR_NAMES = (
    f"io.delta_delta-spark_{SCALA_BINARY}-{DELTA_VERSION}.jar",
    f"io.delta_delta-storage-{DELTA_VERSION}.jar",
)

# Hadoop's S3 connector for s3a:// lakes, matching the Hadoop 3.3.4 client inside pyspark 3.5
# (its jars/hadoop-client-api-3.3.4.jar); hadoop-aws 3.3.4 depends on exactly these two.
HADOOP_VERSION = "3.3.4"
S3A_PACKAGE = f"org.apache.hadoop:hadoop-aws:{HADOOP_VERSION}"
S3A_JAR_NAMES = (
    f"org.apache.hadoop_hadoop-aws-{HADOOP_VERSION}.jar",
    "com.amazonaws_aws-java-sdk-bundle-1.12.262.jar",
    "org.wildfly.openssl_wildfly-openssl-1.0.7.Final.jar",
)

DELTA_CONF = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
}

# What the jobs' results depend on, wherever they run: days and hours come from
# from_unixtime(ts + offset), which Spark formats in the session time zone.
JOB_CONF = {"spark.sql.session.timeZone": "UTC"}

# Small-machine settings, only for a Spark that runs on this machine alone (a local[...] master,
# or a standalone master on a loopback address): never on a cluster, never over a user's value.
LOCAL_CONF = {
    "spark.sql.shuffle.partitions": "8",
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.databricks.delta.snapshotPartitions": "2",
    "spark.databricks.delta.schema.autoMerge.enabled": "false",
    "spark.databricks.delta.retentionDurationCheck.enabled": "false",
}
# The driver on loopback, under the same condition, and only when the user named no driver
# address (spark.driver.host, spark.driver.bindAddress or SPARK_LOCAL_IP): a driver on a
# cluster must advertise an address its executors reach, which only the user knows.
LOOPBACK_CONF = {"spark.driver.host": "127.0.0.1", "spark.driver.bindAddress": "127.0.0.1"}
DRIVER_ADDRESS_KEYS = tuple(LOOPBACK_CONF)


def ivy_dir() -> Path:
    return Path(os.environ.get("ISREC_IVY_DIR", PROJECT_ROOT / ".ivy2"))


def delta_jar_paths() -> list[Path]:
    return [ivy_dir() / "jars" / name for name in DELTA_JAR_NAMES]


def delta_jars_present() -> bool:
    return all(p.is_file() for p in delta_jar_paths())


def jar_paths(object_store: bool = False) -> list[Path]:
    """The cached jars a session needs: Delta, plus the S3A connector for object stores."""
    names = DELTA_JAR_NAMES + (S3A_JAR_NAMES if object_store else ())
    return [ivy_dir() / "jars" / name for name in names]


def packages(object_store: bool = False) -> list[str]:
    return [DELTA_PACKAGE, *([S3A_PACKAGE] if object_store else [])]


def s3a_conf() -> dict[str, str]:
    """S3A settings from the environment the pyarrow side reads too (see etl/storage.py).

    Credentials come from S3A's default chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY,
    instance roles). A custom endpoint (MinIO, SeaweedFS, Ceph) gets path-style addressing.
    """
    conf: dict[str, str] = {}
    endpoint = s3_endpoint()
    if endpoint:
        conf["spark.hadoop.fs.s3a.endpoint"] = endpoint
        conf["spark.hadoop.fs.s3a.path.style.access"] = "true"
        conf["spark.hadoop.fs.s3a.connection.ssl.enabled"] = str(
            endpoint.startswith("https://")
        ).lower()
    region = s3_region()
    if region:
        conf["spark.hadoop.fs.s3a.endpoint.region"] = region
    return conf


def _running_under_spark_submit() -> bool:
    # spark-submit starts the JVM first and hands its gateway to the Python driver.
    return "PYSPARK_GATEWAY_PORT" in os.environ


def runs_on_this_machine(master: str) -> bool:
    """True for local[...] / local-cluster[...] masters and standalone masters on loopback."""
    if master == "local" or master.startswith(("local[", "local-cluster[")):
        return True
    if not master.startswith("spark://"):
        return False  # yarn, k8s://, mesos://: a cluster
    hosts = [hp.rsplit(":", 1)[0].strip("[]") for hp in master[len("spark://") :].split(",")]
    return all(_is_loopback(host) for host in hosts)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def session_conf(
    master: str,
    submitted: Mapping[str, str] | None = None,
    extra_conf: Mapping[str, str] | None = None,
    env: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The settings get_spark gives the session builder.

    ``submitted`` is what spark-submit already set (its ``--conf``, ``--master``,
    spark-defaults.conf), None when the project starts Spark itself. Delta's settings, JOB_CONF,
    the S3A settings of the environment and ``extra_conf`` always apply; LOCAL_CONF and
    LOOPBACK_CONF only when ``master`` runs on this machine. Under spark-submit nothing
    overrides a submitted key: only the missing ones are filled in.
    """
    env = os.environ if env is None else env
    local = runs_on_this_machine(master)
    chosen = {**(submitted or {}), **(extra_conf or {})}
    conf: dict[str, str] = {**DELTA_CONF, **JOB_CONF}
    if local:
        conf.update(LOCAL_CONF)
        if not (any(k in chosen for k in DRIVER_ADDRESS_KEYS) or env.get("SPARK_LOCAL_IP")):
            conf.update(LOOPBACK_CONF)
    conf.update(s3a_conf())
    conf.update(extra_conf or {})
    if submitted is None:
        return conf
    zone = submitted.get("spark.sql.session.timeZone", "UTC")
    if zone != "UTC":
        log.warning("spark.sql.session.timeZone=%s: the ETL's day boundaries assume UTC", zone)
    return {k: v for k, v in conf.items() if k not in submitted}


def _submitted_conf() -> dict[str, str]:
    """What spark-submit set: the spark.* system properties of the JVM it started."""
    from pyspark import SparkConf, SparkContext

    SparkContext._ensure_initialized()  # attaches to spark-submit's JVM (PYSPARK_GATEWAY_PORT)
    return dict(SparkConf().getAll())


def get_spark(
    app_name: str = "isrec",
    master: str | None = None,
    extra_conf: dict[str, str] | None = None,
    object_store: bool = False,
) -> SparkSession:
    """Return a SparkSession with Delta configured (and S3A for ``object_store`` lakes).

    Outside spark-submit: ``local[*]`` (or ``master``) with the cached jars, resolving them
    from Maven Central on first use. Under spark-submit: the submitted master and jars are
    kept, and every submitted setting wins over ours (``session_conf``).
    """
    builder = SparkSession.builder.appName(app_name)
    if _running_under_spark_submit():
        submitted = _submitted_conf()
        conf = session_conf(submitted.get("spark.master", ""), submitted, extra_conf)
    else:
        # Python workers must run this interpreter (the venv), not whatever python3 is on PATH.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        master = master or os.environ.get("ISREC_SPARK_MASTER", "local[*]")
        builder = builder.master(master)
        conf = session_conf(master, None, extra_conf)
        jars = jar_paths(object_store)
        if all(p.is_file() for p in jars):
            conf["spark.jars"] = ",".join(str(p) for p in jars)
        else:
            wanted = ",".join(packages(object_store))
            log.info("resolving %s into %s (first run only)", wanted, ivy_dir())
            conf["spark.jars.packages"] = wanted
            conf["spark.jars.ivy"] = str(ivy_dir())
    for key, value in conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(os.environ.get("ISREC_SPARK_LOG_LEVEL", "WARN"))
    _check_delta_loaded(spark)
    return spark


def _check_delta_loaded(spark: SparkSession) -> None:
    jvm = spark.sparkContext._jvm
    try:
        jvm.java.lang.Class.forName(
            "io.delta.sql.DeltaSparkSessionExtension",
            True,
            jvm.Thread.currentThread().getContextClassLoader(),
        )
    except Exception as exc:  # py4j wraps ClassNotFoundException
        raise SetupError(
            f"Delta Lake jars are not on the Spark classpath: pass --packages {DELTA_PACKAGE} "
            f"(or --jars {','.join(str(p) for p in delta_jar_paths())}) to spark-submit"
        ) from exc


def fetch_jars(object_store: bool = False) -> list[Path]:
    """Resolve the jars once (Spark's Ivy resolver, Maven Central) and report their paths."""
    jars = jar_paths(object_store)
    if not all(p.is_file() for p in jars):
        spark = get_spark("isrec-fetch-jars", master="local[1]", object_store=object_store)
        spark.stop()
    missing = [str(p) for p in jars if not p.is_file()]
    if missing:
        raise SystemExit(f"error: jars not found after resolution: {', '.join(missing)}")
    return jars


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Delta jar helper")
    parser.add_argument("--fetch-jars", action="store_true", help="resolve the Delta jars once")
    parser.add_argument(
        "--object-store",
        action="store_true",
        help=f"also resolve the S3A connector ({S3A_PACKAGE}, ~280 MB) for s3a:// lakes",
    )
    args = parser.parse_args(argv)
    if args.fetch_jars:
        for path in fetch_jars(args.object_store):
            print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
