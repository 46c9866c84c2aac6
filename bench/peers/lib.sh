# shellcheck shell=bash
# Shared settings of bench/peers/{install,run}. Sourced, never run. Versions of the peers are here, and every
# cache directory's name carries a key of what is in it, so a changed version or pom installs anew.
source "$(dirname "${BASH_SOURCE[0]}")/../../infra/spark/lib.sh"   # RECON_CACHE, log/die, Spark's versions

PEERS_DIR="$RECON_ROOT/bench/peers"
PYFLINK_REQUIREMENT="apache-flink==1.20.5"     # PyPI; brings Flink 1.20.5 itself (pyflink/lib)
FLINK_KAFKA_VERSION="3.4.0-1.20"               # org.apache.flink:flink-connector-kafka
PEERS_HADOOP_VERSION="3.3.4"                   # hadoop-client-api/-runtime, as PySpark 3.5.7 ships
SPARK_KAFKA_VERSION="3.5.7"                    # spark-sql-kafka-0-10_2.12, = PySpark's version
SPARK_KAFKA_CLIENTS_VERSION="3.4.1"            # what spark-sql-kafka 3.5.7 depends on
SPARK_COMMONS_POOL2_VERSION="2.11.1"

key_of() { cat "$@" | sha256sum | cut -c1-12; }
flink_key="$(printf '%s %s %s %s %s' "$FLINK_KAFKA_VERSION" "$ICEBERG_VERSION" "$POSTGRESQL_JDBC_VERSION" "$PEERS_HADOOP_VERSION" \
  "$(key_of "$PEERS_DIR/jars/flink-pom.xml")" | sha256sum | cut -c1-12)"
spark_kafka_key="$(printf '%s %s %s %s' "$SPARK_KAFKA_VERSION" "$SPARK_KAFKA_CLIENTS_VERSION" "$SPARK_COMMONS_POOL2_VERSION" \
  "$(key_of "$PEERS_DIR/jars/spark-kafka-pom.xml")" | sha256sum | cut -c1-12)"
udf_key="$(printf '%s %s %s' "$PYFLINK_REQUIREMENT" "$PYSPARK_REQUIREMENT" "$(key_of "$PEERS_DIR"/udf/src/recon/peers/*.java)" \
  | sha256sum | cut -c1-12)"

export PEERS_FLINK_VENV="$RECON_CACHE/venv-flink"
export PEERS_FLINK_JARS="$RECON_CACHE/peers-flink-jars-$flink_key"
export PEERS_SPARK_VENV="$SPARK_VENV"
export PEERS_SPARK_KAFKA_JARS="$RECON_CACHE/peers-spark-kafka-jars-$spark_kafka_key"
export PEERS_UDF_DIR="$RECON_CACHE/peers-udf-$udf_key"
export PEERS_VERSIONS="pyflink=${PYFLINK_REQUIREMENT#*==} flink-connector-kafka=$FLINK_KAFKA_VERSION iceberg=$ICEBERG_VERSION \
postgresql-jdbc=$POSTGRESQL_JDBC_VERSION hadoop-client=$PEERS_HADOOP_VERSION pyspark=${PYSPARK_REQUIREMENT#*==} \
spark-sql-kafka=$SPARK_KAFKA_VERSION kafka-clients(spark)=$SPARK_KAFKA_CLIENTS_VERSION"
