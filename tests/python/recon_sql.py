"""The shipped SQL (infra/sql): loads the view and query files, fills their placeholders, and collects the
figures every engine test compares with the truth, so that Spark, Trino and DuckDB run the very same text.

Placeholders are `${name}`: `${ns}` = the tables' catalog-qualified namespace (e.g. `recon.recon`), `${views}` =
where the views live (by default the same). A file holds one statement; a trailing `;` is dropped (Trino's and
Spark's APIs take a statement without it).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

from recon_job import REPO
from truth import Figures, normalize_current

SQL_DIR = REPO / "infra" / "sql"
VIEWS_DIR = SQL_DIR / "views"
QUERIES_DIR = SQL_DIR / "queries"

# An engine is a function from one SQL statement to its rows as dicts (column name -> Python value, decimals
# as Decimal).
RunSql = Callable[[str], list[dict]]


def render(path: Path, **params: str) -> str:
    text = path.read_text()
    missing = set(re.findall(r"\$\{(\w+)\}", text)) - set(params)
    assert not missing, f"{path}: no value for {sorted(missing)}"
    for k, v in params.items():
        text = text.replace("${" + k + "}", v)
    body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("--")).strip()
    return body[:-1].rstrip() if body.endswith(";") else body


def view_files() -> list[Path]:
    """The views, in the order they must be created (file names start with their rank)."""
    files = sorted(VIEWS_DIR.glob("*.sql"))
    assert files, f"no views in {VIEWS_DIR}"
    return files


def create_views(run: RunSql, ns: str, views: str | None = None) -> list[str]:
    """Creates (or replaces) every shipped view over the tables of `ns`, in `views` (default `ns`); returns
    their names."""
    names = []
    for f in view_files():
        run(render(f, ns=ns, views=views or ns))
        names.append(f.stem.split("_", 1)[1])
    return names


def query(name: str, **params: str) -> str:
    return render(QUERIES_DIR / f"{name}.sql", **params)


def collect(engine: str, run: RunSql, ns: str, views: str | None = None) -> Figures:
    """Every figure of [`truth.Truth`], read through the shipped views (in `views`, default `ns`) and queries."""
    v = views or ns
    counts = run(query("ledger_counts", ns=ns))
    assert len(counts) == 1, counts
    totals = {
        (r["event_type"], r["currency"]): (int(r["events"]), _dec(r["amount"]))
        for r in run(query("totals_by_type_currency", ns=ns))
    }
    daily = {
        (_date(r["business_date"]), r["event_type"], r["currency"]): (int(r["events"]), _dec(r["amount"]))
        for r in run(f"SELECT * FROM {v}.daily_totals")
    }
    current_rows = run(f"SELECT * FROM {v}.current_trip_balances")
    current = {r["trip_id"]: normalize_current(r) for r in current_rows}
    assert len(current) == len(current_rows), f"{engine}: current_trip_balances has a trip twice"
    return Figures(
        engine=engine,
        ledger_rows=int(counts[0]["ledger_rows"]),
        distinct_event_ids=int(counts[0]["distinct_event_ids"]),
        totals=totals,
        daily=daily,
        current=current,
        open_trips={r["trip_id"] for r in run(f"SELECT trip_id FROM {v}.open_trips")},
        discrepant_trips={r["trip_id"] for r in run(f"SELECT trip_id FROM {v}.discrepant_trips")},
        rejected={r["reason"]: int(r["records"]) for r in run(f"SELECT reason, records FROM {v}.rejected_by_reason")},
    )


def _dec(v) -> Decimal:
    assert isinstance(v, Decimal), f"a sum of decimals must come back as a Decimal, got {type(v).__name__}: {v!r}"
    return v


def _date(v):
    # datetime.date from every client; a datetime would mean the cast did not happen.
    assert type(v).__name__ == "date", f"business_date must be a date, got {type(v).__name__}: {v!r}"
    return v
