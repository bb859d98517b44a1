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

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DELTA_VERSION = version("delta-spark")
SCALA_BINARY = "2.12"
DELTA_PACKAGE = f"io.delta:delta-spark_{SCALA_BINARY}:{DELTA_VERSION}"
DELTA_JAR_NAMES = (
    f"io.delta_delta-spark_{SCALA_BINARY}-{DELTA_VERSION}.jar",
    f"io.delta_delta-storage-{DELTA_VERSION}.jar",
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


def _running_under_spark_submit() -> bool:
    # spark-submit starts the JVM first and hands its gateway to the Python driver.
    return "PYSPARK_GATEWAY_PORT" in os.environ


def get_spark(
    app_name: str = "isrec",
    master: str | None = None,
    extra_conf: dict[str, str] | None = None,
) -> SparkSession:
    """Return a SparkSession with Delta configured.

    Outside spark-submit: ``local[*]`` (or ``master``) with the cached Delta jars, resolving them
    from Maven Central on first use. Under spark-submit: the submitted master and jars are kept.
    """
    builder = SparkSession.builder.appName(app_name)
    conf = {**DELTA_CONF, **LOCAL_CONF, **(extra_conf or {})}
    if not _running_under_spark_submit():
        # Python workers must run this interpreter (the venv), not whatever python3 is on PATH.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        builder = builder.master(master or os.environ.get("ISREC_SPARK_MASTER", "local[*]"))
        if delta_jars_present():
            conf["spark.jars"] = ",".join(str(p) for p in delta_jar_paths())
        else:
            log.info("resolving %s into %s (first run only)", DELTA_PACKAGE, ivy_dir())
            conf["spark.jars.packages"] = DELTA_PACKAGE
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


def fetch_jars() -> list[Path]:
    """Resolve the Delta jars once (Spark's Ivy resolver, Maven Central) and report their paths."""
    if not delta_jars_present():
        spark = get_spark("isrec-fetch-jars", master="local[1]")
        spark.stop()
    missing = [str(p) for p in delta_jar_paths() if not p.is_file()]
    if missing:
        raise SystemExit(f"error: Delta jars not found after resolution: {', '.join(missing)}")
    return delta_jar_paths()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Delta jar helper")
    parser.add_argument("--fetch-jars", action="store_true", help="resolve the Delta jars once")
    args = parser.parse_args(argv)
    if args.fetch_jars:
        for path in fetch_jars():
            print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
