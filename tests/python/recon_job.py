"""Runs the real `recon-pipeline` and `batch-verify` binaries against the local services (infra/local/up), the
way tests/src/pipeline.rs does for the Rust tests: one job per test, isolated by a unique name (job id, topic,
namespace, warehouse and checkpoint prefixes), the SQL catalog on PostgreSQL and the warehouse on the S3 server.

Every wait has a deadline; a child that outlives it is killed and the test fails with its log.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

REPO = Path(__file__).resolve().parents[2]
CATALOG_NAME = "recon"  # the SQL catalog's catalog_name, shared by every engine (README "Querying")


def _target_dir() -> Path:
    return Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))


def binary(name: str) -> Path:
    """A workspace binary: $RECON_<NAME>_BIN, else target/debug/<name> (tests/python/run builds it)."""
    env = "RECON_" + name.upper().replace("-", "_") + "_BIN"
    path = Path(os.environ.get(env) or _target_dir() / "debug" / name)
    assert path.exists(), f"{path} not found: build it (cargo build -p {name}) or set {env}"
    return path


@dataclass(frozen=True)
class Services:
    """The variables infra/local/env exports."""

    kafka: str
    pg_catalog_url: str  # postgres://user:pass@host:port/db
    s3_endpoint: str
    s3_key: str
    s3_secret: str
    s3_region: str
    warehouse_bucket: str
    checkpoint_bucket: str

    @classmethod
    def from_env(cls) -> "Services | None":
        if os.environ.get("RECON_SERVICES") != "1":
            return None

        def var(name: str) -> str:
            v = os.environ.get(name, "").strip()
            assert v, f"RECON_SERVICES=1 but {name} is not set: eval \"$(infra/local/env)\""
            return v

        return cls(
            kafka=var("RECON_KAFKA_BOOTSTRAP"),
            pg_catalog_url=var("RECON_PG_CATALOG_URL"),
            s3_endpoint=var("RECON_S3_ENDPOINT"),
            s3_key=var("RECON_S3_ACCESS_KEY_ID"),
            s3_secret=var("RECON_S3_SECRET_ACCESS_KEY"),
            s3_region=var("RECON_S3_REGION"),
            warehouse_bucket=var("RECON_S3_WAREHOUSE_BUCKET"),
            checkpoint_bucket=var("RECON_S3_CHECKPOINT_BUCKET"),
        )

    @property
    def pg(self):
        """host, port, user, password, database of the catalog database."""
        u = urlparse(self.pg_catalog_url)
        return u.hostname, u.port or 5432, u.username, u.password, u.path.lstrip("/")

    @property
    def jdbc_url(self) -> str:
        host, port, _, _, db = self.pg
        return f"jdbc:postgresql://{host}:{port}/{db}"


def unique_name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


class Job:
    """One pipeline job with its own topic, namespace and prefixes, and its truth files."""

    def __init__(self, svc: Services, prefix: str, workdir: Path, checkpoint_interval_ms: int = 500):
        self.svc = svc
        self.name = unique_name(prefix)
        self.topic = f"{self.name}.events"
        self.namespace = self.name
        self.warehouse = f"s3://{svc.warehouse_bucket}/{self.name}"
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config = self.dir / "recon.toml"
        self.truth_files: list[Path] = []
        self.truth_dir = self.dir / "truth"  # only truth files: batch-verify reads the whole directory
        self._runs = 0
        self._generated = 0
        self._lock = threading.Lock()
        s = svc
        self.config.write_text(
            f"""job_id = "{self.name}"

[source]
brokers = "{s.kafka}"
topic = "{self.topic}"
poll_batch_records_max = 2000

[catalog]
name = "{CATALOG_NAME}"
uri = "{s.pg_catalog_url}"
warehouse = "{self.warehouse}"
namespace = "{self.namespace}"

[catalog.properties]
"s3.endpoint" = "{s.s3_endpoint}"
"s3.access-key-id" = "{s.s3_key}"
"s3.secret-access-key" = "{s.s3_secret}"
"s3.region" = "{s.s3_region}"
"s3.path-style-access" = "true"
"s3.disable-config-load" = "true"
"s3.disable-ec2-metadata" = "true"

[checkpoint]
store = "s3://{s.checkpoint_bucket}/{self.name}"
interval_ms = {checkpoint_interval_ms}

[checkpoint.store_options]
aws_endpoint = "{s.s3_endpoint}"
aws_allow_http = "true"
aws_access_key_id = "{s.s3_key}"
aws_secret_access_key = "{s.s3_secret}"
aws_region = "{s.s3_region}"
aws_virtual_hosted_style_request = "false"
"""
        )

    # --- input ---------------------------------------------------------------------------------------------
    def generate(self, trips: int, seed: int, partitions: int = 3, timeout_s: float = 120, **rates: float) -> Path:
        """Publishes `trips` trips of seeded traffic (duplicates, conflicts, out-of-order, poison on) and records
        the truth; returns the truth file. Several calls with distinct seeds add distinct trips and events
        (trip and event ids carry the seed)."""
        with self._lock:  # generate may run on a feeder thread beside another call: reserve a distinct file
            index = self._generated
            self._generated += 1
        self.truth_dir.mkdir(exist_ok=True)
        truth = self.truth_dir / f"truth-{index:03}.jsonl"
        knobs = {"duplicate_rate": 0.03, "conflict_rate": 0.005, "out_of_order_rate": 0.05, "poison_rate": 0.01}
        knobs.update(rates)
        args = [
            str(binary("recon-pipeline")), "generate",
            "--brokers", self.svc.kafka, "--topic", self.topic, "--partitions", str(partitions),
            "--trips", str(trips), "--seed", str(seed), "--truth-jsonl", str(truth), "--no-progress",
        ]
        for k, v in knobs.items():
            args += ["--" + k.replace("_", "-"), str(v)]
        out = run_checked(args, timeout_s, self.dir / f"generate-{index}.log")
        assert "published" in out, out
        with self._lock:
            self.truth_files.append(truth)
        return truth

    # --- the job ---------------------------------------------------------------------------------------------
    def spawn(self, idle_exit_ms: int = 4000, env: dict[str, str] | None = None) -> tuple[subprocess.Popen, Path]:
        """Starts `recon-pipeline run`; output to a log file (a chatty child never blocks on a pipe)."""
        log = self.dir / f"run-{self._runs}.log"
        self._runs += 1
        child_env = dict(os.environ, RUST_LOG="warn,recon_pipeline=info", RECON_LOG_FORMAT="human", NO_COLOR="1")
        child_env.update(env or {})
        with open(log, "wb") as out:
            child = subprocess.Popen(
                [str(binary("recon-pipeline")), "run", "--config", str(self.config),
                 "--exit-when-idle-ms", str(idle_exit_ms)],
                stdout=out, stderr=subprocess.STDOUT, env=child_env,
            )
        return child, log

    def run_until_idle(self, timeout_s: float = 180) -> str:
        """Runs the job until it has been idle for 4 s and stops cleanly; returns its log."""
        child, log = self.spawn()
        rc = wait(child, timeout_s, log)
        text = log.read_text(errors="replace")
        assert rc == 0 and "stopped cleanly" in text, f"recon-pipeline run exited {rc}:\n{text[-4000:]}"
        return text

    def kill_after_commit(self, commits: int = 1, timeout_s: float = 120) -> str:
        """Starts the job, waits (polling its log, with a deadline) until `commits` commits have landed, then
        SIGKILLs it: a crash in the middle of consuming. Returns the log."""
        child, log = self.spawn(idle_exit_ms=600_000)
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                text = log.read_text(errors="replace")
                if text.count("commit landed") >= commits:
                    break
                assert child.poll() is None, f"recon-pipeline exited ({child.returncode}) before committing:\n{text}"
                assert time.monotonic() < deadline, f"no {commits} commits within {timeout_s}s:\n{text[-4000:]}"
                time.sleep(0.05)
        finally:
            if child.poll() is None:
                child.send_signal(signal.SIGKILL)
            child.wait(timeout=30)
        assert child.returncode == -signal.SIGKILL, f"expected death by SIGKILL, got {child.returncode}"
        return log.read_text(errors="replace")

    # --- verification ------------------------------------------------------------------------------------------
    def batch_verify(self, day, timeout_s: float = 120) -> dict:
        """Runs batch-verify for one business day against the truth files; returns its JSON report."""
        report = self.dir / f"verify-{day}.json"
        args = [str(binary("batch-verify")), "--config", str(self.config), "--date", str(day),
                "--truth", "files", "--truth-url", str(self.truth_dir), "--report", str(report), "--no-progress"]
        log = self.dir / f"verify-{day}.log"
        with open(log, "wb") as out:
            p = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        rc = wait(p, timeout_s, log)
        text = log.read_text(errors="replace")
        assert report.exists(), f"batch-verify wrote no report (exit {rc}):\n{text}"
        r = json.loads(report.read_text())
        assert rc == 0, f"batch-verify {day} exited {rc}:\n{text[-4000:]}"
        return r


def wait(child: subprocess.Popen, timeout_s: float, log: Path) -> int:
    """Waits for a child with a deadline; kills it and fails with its log when the deadline passes."""
    try:
        return child.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait(timeout=30)
        raise AssertionError(f"{child.args[0]} did not exit within {timeout_s}s:\n{log.read_text(errors='replace')[-4000:]}")


def run_checked(args: list[str], timeout_s: float, log: Path) -> str:
    with open(log, "wb") as out:
        p = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    rc = wait(p, timeout_s, log)
    text = log.read_text(errors="replace")
    assert rc == 0, f"{' '.join(args[:2])} exited {rc}:\n{text[-4000:]}"
    return text
