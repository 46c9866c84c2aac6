"""A PySpark session on recon's lakehouse, configured from infra/spark/conf/spark-defaults.conf plus the jars
infra/spark/install fetched. Used by infra/spark/maintain, the engine tests and anyone's notebook:

    import recon_spark
    spark = recon_spark.session()
    spark.sql("SELECT * FROM recon.recon.daily_totals").show()

The local services' addresses are taken from infra/local/env's variables when they are set; anything else
(another PostgreSQL, S3 endpoint, credentials) goes in `overrides` as Spark conf keys, or in the conf file.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CONF = HERE / "conf" / "spark-defaults.conf"
CATALOG = "recon"


def jars_dir() -> Path:
    """Where infra/spark/install put the jars: $RECON_SPARK_JARS (infra/spark/lib.sh exports it), else the
    newest complete $RECON_CACHE/spark-jars-<iceberg version>."""
    explicit = os.environ.get("RECON_SPARK_JARS")
    if explicit:
        return Path(explicit)
    cache = Path(os.environ.get("RECON_CACHE", REPO / ".cache"))
    done = sorted(p.parent for p in cache.glob("spark-jars-*/.complete"))
    return done[-1] if done else cache / "spark-jars-<run infra/spark/install>"


def defaults() -> dict[str, str]:
    """The key/value pairs of spark-defaults.conf."""
    out = {}
    for line in CONF.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, value = line.split(None, 1)
            out[key] = value.strip()
    return out


def local_overrides_from_env() -> dict[str, str]:
    """The catalog's addresses from infra/local/env's variables, when set (ports may be overridden there)."""
    out = {}
    pg = os.environ.get("RECON_PG_CATALOG_URL")  # postgres://user:pass@host:port/db
    if pg:
        from urllib.parse import urlparse

        u = urlparse(pg)
        out[f"spark.sql.catalog.{CATALOG}.uri"] = f"jdbc:postgresql://{u.hostname}:{u.port or 5432}{u.path}"
        out[f"spark.sql.catalog.{CATALOG}.jdbc.user"] = u.username or ""
        out[f"spark.sql.catalog.{CATALOG}.jdbc.password"] = u.password or ""
    for env, key in (
        ("RECON_S3_ENDPOINT", "s3.endpoint"),
        ("RECON_S3_ACCESS_KEY_ID", "s3.access-key-id"),
        ("RECON_S3_SECRET_ACCESS_KEY", "s3.secret-access-key"),
        ("RECON_S3_REGION", "client.region"),
    ):
        if os.environ.get(env):
            out[f"spark.sql.catalog.{CATALOG}.{key}"] = os.environ[env]
    return out


def session(app: str = "recon", overrides: dict[str, str] | None = None, extra_jars=()):
    """A SparkSession with catalog `recon` (getOrCreate: one per process); `extra_jars` go on the
    classpath after infra/spark's."""
    from pyspark.sql import SparkSession

    jars = sorted(glob.glob(str(jars_dir() / "*.jar")))
    if not any("iceberg-spark-runtime" in j for j in jars):
        raise RuntimeError(f"no Iceberg Spark runtime in {jars_dir()}: run infra/spark/install")
    conf = defaults()
    conf.update(local_overrides_from_env())
    conf.update(overrides or {})
    conf["spark.jars"] = ",".join(jars + list(extra_jars))
    # log4j2.properties beside spark-defaults.conf (read by the JVM PySpark starts).
    os.environ.setdefault("SPARK_CONF_DIR", str(CONF.parent))
    conf.setdefault("spark.ui.showConsoleProgress", "false")
    builder = SparkSession.builder.appName(app)
    for k, v in conf.items():
        builder = builder.config(k, v)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark
