"""SparkSession builder with Delta Lake configured from real Delta jars.

The jars (delta-spark_2.12 and delta-storage) are resolved once from Maven Central by Spark's
own resolver into a project-local Ivy folder (``.ivy2/``) and then used from there through
``spark.jars``, so later runs need no network. Under ``spark-submit`` pass them yourself with
``--packages`` or ``--jars`` (see README); the builder then only adds the Delta settings.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from importlib.metadata import version
from pathlib import Path

from pyspark.sql import SparkSession

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

# Small-machine defaults; every one can be overridden with extra_conf or spark-submit --conf.
LOCAL_CONF = {
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.shuffle.partitions": "8",
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.driver.host": "127.0.0.1",
    "spark.driver.bindAddress": "127.0.0.1",
    "spark.sql.adaptive.enabled": "true",
    "spark.databricks.delta.snapshotPartitions": "2",
    "spark.databricks.delta.schema.autoMerge.enabled": "false",
    "spark.databricks.delta.retentionDurationCheck.enabled": "false",
}


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


def get_spark(
    app_name: str = "isrec",
    master: str | None = None,
    extra_conf: dict[str, str] | None = None,
    object_store: bool = False,
) -> SparkSession:
    """Return a SparkSession with Delta configured (and S3A for ``object_store`` lakes).

    Outside spark-submit: ``local[*]`` (or ``master``) with the cached jars, resolving them
    from Maven Central on first use. Under spark-submit: the submitted master and jars are kept.
    """
    builder = SparkSession.builder.appName(app_name)
    conf = {**DELTA_CONF, **LOCAL_CONF, **s3a_conf(), **(extra_conf or {})}
    if not _running_under_spark_submit():
        # Python workers must run this interpreter (the venv), not whatever python3 is on PATH.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        builder = builder.master(master or os.environ.get("ISREC_SPARK_MASTER", "local[*]"))
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
        raise RuntimeError(
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
