"""What the tables must hold, computed from the generator's JSON Lines truth, and the comparison of what an engine
returned with it.

The truth file (`recon-pipeline generate --truth-jsonl F`) has one line per distinct valid event, at its first
emission, and one line per bad record (poison, and the second version of a conflicting duplicate):

    {"seq":0,"truth":"event","event":{"event_id":..,"event_type":..,"trip_id":..,"amount":"17.03",..}}
    {"seq":7,"truth":"reject","class":"not_json","event_id":null,"key_hex":"7472..","payload_hex":"7b22.."}

Money is `decimal.Decimal` end to end here: amounts are parsed from their decimal strings and compared with the
`Decimal` values each engine's client returns, never through a float.

The balance fold mirrors `recon_schemas::balance` (schemas/src/balance.rs): sums per event type,
`rider_balance = (charged + adjusted) - collected`,
`settlement_balance = (charged + adjusted - refunded) - paid_out - fees`, and the status rules with their
precedence (conflicting duplicate, currency mismatch, rider overpaid, driver overpaid, balanced, open).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from decimal import Decimal
from pathlib import Path

ZERO = Decimal(0)

# event_type -> the sum it adds to (schemas/src/balance.rs).
SUM_OF_TYPE = {
    "trip_charge": "charged",
    "rider_payment": "collected",
    "refund": "refunded",
    "driver_payout": "paid_out",
    "platform_fee": "fees",
    "adjustment": "adjusted",
}
SUMS = ("charged", "collected", "refunded", "paid_out", "fees", "adjusted")

# The columns of the current-balance view that are compared with the fold, in this order.
BALANCE_COLUMNS = (
    "currency",
    *SUMS,
    "rider_balance",
    "settlement_balance",
    "status",
    "discrepancy_reason",
    "event_count",
    "last_occurred_at",
)


def parse_time(text: str) -> datetime:
    """RFC 3339 with a trailing Z (the generator's form) -> an aware UTC datetime."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(timezone.utc)


def as_utc(value: datetime) -> datetime:
    """An engine's timestamp -> aware UTC. Naive values (Spark's collect, DuckDB on some types) are UTC here:
    every engine session in these tests runs in UTC."""
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


@dataclass
class Balance:
    """One trip's fold."""

    currency: str
    charged: Decimal = ZERO
    collected: Decimal = ZERO
    refunded: Decimal = ZERO
    paid_out: Decimal = ZERO
    fees: Decimal = ZERO
    adjusted: Decimal = ZERO
    event_count: int = 0
    last_occurred_at: datetime | None = None
    currency_mismatch: bool = False
    conflicting_duplicate: bool = False

    def apply(self, event_type: str, amount: Decimal, currency: str, occurred_at: datetime) -> None:
        if currency != self.currency:
            self.currency_mismatch = True
            return
        name = SUM_OF_TYPE[event_type]
        setattr(self, name, getattr(self, name) + amount)
        self.event_count += 1
        if self.last_occurred_at is None or occurred_at > self.last_occurred_at:
            self.last_occurred_at = occurred_at

    @property
    def rider_balance(self) -> Decimal:
        return (self.charged + self.adjusted) - self.collected

    @property
    def settlement_balance(self) -> Decimal:
        return (self.charged + self.adjusted - self.refunded) - self.paid_out - self.fees

    @property
    def status_and_reason(self) -> tuple[str, str | None]:
        if self.conflicting_duplicate:
            return "DISCREPANCY", "conflicting_duplicate"
        if self.currency_mismatch:
            return "DISCREPANCY", "currency_mismatch"
        rider, settlement = self.rider_balance, self.settlement_balance
        if rider < ZERO:
            return "DISCREPANCY", "rider_overpaid"
        if settlement < ZERO:
            return "DISCREPANCY", "driver_overpaid"
        if rider == ZERO and settlement == ZERO and self.event_count > 0 and self.charged > ZERO:
            return "BALANCED", None
        return "OPEN", None

    def row(self) -> tuple:
        """The tuple of BALANCE_COLUMNS."""
        status, reason = self.status_and_reason
        return (
            self.currency,
            *(getattr(self, s) for s in SUMS),
            self.rider_balance,
            self.settlement_balance,
            status,
            reason,
            self.event_count,
            self.last_occurred_at,
        )


@dataclass
class Truth:
    """Everything the tables must hold after the job has consumed the truth's records."""

    events: int = 0
    event_ids: set[str] = field(default_factory=set)
    # (event_type, currency) -> (count, sum)
    totals: dict[tuple[str, str], tuple[int, Decimal]] = field(default_factory=dict)
    # (business_date, event_type, currency) -> (count, sum); the business date is the UTC date of occurred_at.
    daily: dict[tuple[date, str, str], tuple[int, Decimal]] = field(default_factory=dict)
    # trip_id -> fold
    balances: dict[str, Balance] = field(default_factory=dict)
    # reason code -> dead letters
    rejected: Counter = field(default_factory=Counter)

    @classmethod
    def from_jsonl(cls, *paths: Path) -> "Truth":
        """Reads one or more truth files (one per `generate` run, in the order they were published)."""
        t = cls()
        counts: dict = defaultdict(int)
        sums: dict = defaultdict(lambda: ZERO)
        dcounts: dict = defaultdict(int)
        dsums: dict = defaultdict(lambda: ZERO)
        conflicted: set[str] = set()
        for path in paths:
            with open(path, encoding="utf-8") as f:
                for line in f:
                    row = json.loads(line)
                    if row["truth"] == "event":
                        ev = row["event"]
                        amount = Decimal(ev["amount"])
                        at = parse_time(ev["occurred_at"])
                        key = (ev["event_type"], ev["currency"])
                        counts[key] += 1
                        sums[key] += amount
                        dkey = (at.date(), *key)
                        dcounts[dkey] += 1
                        dsums[dkey] += amount
                        assert ev["event_id"] not in t.event_ids, f"truth lists event {ev['event_id']} twice"
                        t.event_ids.add(ev["event_id"])
                        t.events += 1
                        b = t.balances.setdefault(ev["trip_id"], Balance(currency=ev["currency"]))
                        b.apply(ev["event_type"], amount, ev["currency"], at)
                    elif row["truth"] == "reject":
                        t.rejected[row["class"]] += 1
                        if row["class"] == "conflicting_duplicate":
                            conflicted.add(bytes.fromhex(row["key_hex"]).decode("utf-8"))
                    else:
                        raise AssertionError(f"{path}: unknown truth row {row['truth']!r}")
        for trip in conflicted:
            # First-seen wins (the pipeline's rule and the truth's): the conflicting version is not summed,
            # and flags the trip.
            assert trip in t.balances, f"conflicting duplicate on trip {trip} that has no event"
            t.balances[trip].conflicting_duplicate = True
        t.totals = {k: (counts[k], sums[k]) for k in counts}
        t.daily = {k: (dcounts[k], dsums[k]) for k in dcounts}
        return t

    @property
    def business_dates(self) -> list[date]:
        return sorted({d for (d, _, _) in self.daily})

    def current_rows(self) -> dict[str, tuple]:
        return {trip: b.row() for trip, b in self.balances.items()}

    def trips_with_status(self, status: str) -> set[str]:
        return {trip for trip, b in self.balances.items() if b.status_and_reason[0] == status}


@dataclass
class Figures:
    """What one engine answered, in the shapes of [`Truth`]. Built by each engine's test from the shipped views
    (infra/sql/views) and from whole-table counts."""

    engine: str
    ledger_rows: int
    distinct_event_ids: int
    totals: dict[tuple[str, str], tuple[int, Decimal]]
    daily: dict[tuple[date, str, str], tuple[int, Decimal]]
    current: dict[str, tuple]
    open_trips: set[str]
    discrepant_trips: set[str]
    rejected: dict[str, int]


def normalize_current(row: dict) -> tuple:
    """A current-balance row (column name -> value, any engine) -> the tuple of BALANCE_COLUMNS, with types
    made comparable: Decimal stays Decimal (asserted), timestamps to aware UTC, counts to int."""
    out = []
    for c in BALANCE_COLUMNS:
        v = row[c]
        if c in SUMS or c in ("rider_balance", "settlement_balance"):
            assert isinstance(v, Decimal), f"{c} must come back as a Decimal, got {type(v).__name__}: {v!r}"
        elif c == "last_occurred_at":
            v = as_utc(v)
        elif c == "event_count":
            v = int(v)
        out.append(v)
    return tuple(out)


def assert_matches(truth: Truth, got: Figures) -> None:
    """Every figure equal to the truth, exactly; on failure the message names the engine, the figure and a few
    differing keys."""
    e = got.engine

    def diff(name: str, want: dict, have: dict) -> None:
        if want == have:
            return
        keys = sorted(set(want) | set(have), key=repr)
        bad = [(k, want.get(k), have.get(k)) for k in keys if want.get(k) != have.get(k)]
        lines = "\n".join(f"    {k}: truth {w!r}, {e} {h!r}" for k, w, h in bad[:10])
        raise AssertionError(f"{e}: {name} differ in {len(bad)} of {len(keys)} keys, e.g.\n{lines}")

    assert got.ledger_rows == truth.events, f"{e}: ledger_events has {got.ledger_rows} rows, truth {truth.events}"
    assert got.distinct_event_ids == truth.events, (
        f"{e}: {got.distinct_event_ids} distinct event ids for {got.ledger_rows} rows (truth {truth.events})"
    )
    diff("totals per event type and currency", truth.totals, got.totals)
    diff("daily totals", truth.daily, got.daily)
    diff("current balances", truth.current_rows(), got.current)
    assert got.open_trips == truth.trips_with_status("OPEN"), f"{e}: open trips differ"
    assert got.discrepant_trips == truth.trips_with_status("DISCREPANCY"), f"{e}: discrepant trips differ"
    diff("rejected events by reason", dict(truth.rejected), dict(got.rejected))


def assert_matches_batch_verify(got: Figures, reports: list[dict]) -> None:
    """The engine's daily totals equal batch-verify's ledger totals of each verified day, and every report is
    clean."""
    for r in reports:
        assert r["status"] == "clean", f"batch-verify {r['business_date']}: {r['status']}: {r.get('error')}"
        day = date.fromisoformat(r["business_date"])
        bv = {(t["event_type"], t["currency"]): (t["ledger_count"], Decimal(t["ledger_amount"])) for t in r["totals"]}
        mine = {(t, c): v for (d, t, c), v in got.daily.items() if d == day}
        assert mine == bv, f"{got.engine}: daily totals of {day} differ from batch-verify's:\n{mine}\n{bv}"
        assert sum(n for n, _ in mine.values()) == r["ledger_events"]
