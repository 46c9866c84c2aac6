"""pyiceberg on the pipeline's catalog: the SQL catalog on PostgreSQL (the Java JdbcCatalog schema the Rust side
created) with the warehouse on the S3 server, and DuckDB over the Arrow results."""

from __future__ import annotations

import duckdb
import pyarrow as pa
from pyiceberg.catalog.sql import SqlCatalog

from recon_job import CATALOG_NAME, Services

# The tables the pipeline writes (and batch-verify's two).
PIPELINE_TABLES = ("ledger_events", "trip_balances", "rejected_events")


def catalog(svc: Services) -> SqlCatalog:
    host, port, user, password, db = svc.pg
    return SqlCatalog(
        CATALOG_NAME,
        **{
            "uri": f"postgresql+psycopg2://{user}:{password}@{host}:{port}/{db}",
            # The Rust side creates the catalog tables (schema V1); pyiceberg must not race it with its own DDL.
            "init_catalog_tables": "false",
            "s3.endpoint": svc.s3_endpoint,
            "s3.access-key-id": svc.s3_key,
            "s3.secret-access-key": svc.s3_secret,
            "s3.region": svc.s3_region,
            "s3.path-style-access": "true",
        },
    )


def duckdb_over(tables: dict[str, pa.Table], schema: str) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB holding `tables` as `schema.<name>`, in UTC (business days are UTC dates)."""
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute(f'CREATE SCHEMA "{schema}"')
    for name, arrow in tables.items():
        con.register(f"arrow_{name}", arrow)
        con.execute(f'CREATE TABLE "{schema}".{name} AS SELECT * FROM arrow_{name}')
        con.unregister(f"arrow_{name}")
    return con


def duckdb_runner(con: duckdb.DuckDBPyConnection):
    def run(sql: str) -> list[dict]:
        cur = con.execute(sql)
        if cur.description is None:
            return []
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, row)) for row in cur.fetchall()]

    return run
