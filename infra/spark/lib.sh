# shellcheck shell=bash
# Shared settings of infra/spark/{install,sql,maintain,test}. Sourced, never run.
source "$(dirname "${BASH_SOURCE[0]}")/../local/lib.sh"

SPARK_DIR="$RECON_ROOT/infra/spark"
ICEBERG_VERSION="${RECON_ICEBERG_VERSION:-1.10.1}"   # iceberg-spark-runtime-3.5_2.12 and iceberg-aws-bundle
SPARK_LINE="3.5_2.12"                                 # must match PySpark's Spark and Scala versions
POSTGRESQL_JDBC_VERSION="42.7.8"
PYSPARK_REQUIREMENT="pyspark==3.5.7"
export RECON_SPARK_JARS="${RECON_SPARK_JARS:-$RECON_CACHE/spark-jars-$ICEBERG_VERSION}"
SPARK_VENV="$RECON_CACHE/venv-spark"
# Spark 3.5 runs on Java 17 (the machine's default); an explicit JAVA_HOME wins.
if [[ -z "${JAVA_HOME:-}" && -d /usr/lib/jvm/java-17-openjdk-amd64 ]]; then export JAVA_HOME=/usr/lib/jvm/java-17-openjdk-amd64; fi
