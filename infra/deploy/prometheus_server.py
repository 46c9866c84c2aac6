"""A throw-away Prometheus on loopback that scrapes one target, for live_job.py: evaluates the dashboard's
queries and the alert expressions against what a real job exports, as Grafana and the rule engine would.

The binary is Debian's (package `prometheus`, extracted next to promtool by infra/deploy/check and passed as
RECON_PROMETHEUS_BIN); its TSDB lives in a temporary directory and it is stopped (SIGTERM, then SIGKILL after a
deadline) when the `with` block ends.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Self

import yaml

SCRAPE_INTERVAL_S = 1
STARTUP_DEADLINE_S = 60


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Prometheus:
    """`with Prometheus(binary, workdir, target, job) as p: p.query(expr)`; `target` is one host:port or a list
    of them (a fleet's processes, all under one scrape job)."""

    def __init__(self, binary: Path, workdir: Path, target: str | list[str], job: str) -> None:
        self.binary, self.dir, self.job = binary, workdir, job
        self.targets = [target] if isinstance(target, str) else list(target)
        self.target = ", ".join(self.targets)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.log = workdir / "prometheus.log"

    def __enter__(self) -> Self:
        config = {
            "global": {"scrape_interval": f"{SCRAPE_INTERVAL_S}s", "evaluation_interval": f"{SCRAPE_INTERVAL_S}s"},
            "scrape_configs": [{"job_name": self.job, "static_configs": [{"targets": self.targets}]}],
        }
        (self.dir / "prometheus.yml").write_text(yaml.safe_dump(config))
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [
                    str(self.binary),
                    f"--config.file={self.dir / 'prometheus.yml'}",
                    f"--storage.tsdb.path={self.dir / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        return self

    def __exit__(self, *exc) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def query(self, expr: str) -> list[dict]:
        """Instant query at now; raises AssertionError with Prometheus's message on an error."""
        url = f"{self.base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                body = json.load(r)
        except urllib.error.HTTPError as e:
            raise AssertionError(f"Prometheus refused {expr!r}: {e.read().decode()}") from e
        assert body.get("status") == "success", f"Prometheus: {body}"
        return body["data"]["result"]

    def wait_for_samples(self, samples: int) -> None:
        """Polls until every target has been scraped successfully `samples` times (rate() needs two)."""
        deadline = time.monotonic() + STARTUP_DEADLINE_S
        expr = f'count_over_time(up{{job="{self.job}"}}[5m]) >= {samples} and up{{job="{self.job}"}} == 1'
        while True:
            assert self.proc and self.proc.poll() is None, f"Prometheus exited:\n{self.log.read_text()[-3000:]}"
            try:
                if len(self.query(expr)) == len(self.targets):
                    return
            except (OSError, AssertionError):
                pass  # not listening yet
            assert time.monotonic() < deadline, (
                f"Prometheus did not scrape {self.target} {samples} times in {STARTUP_DEADLINE_S}s:\n"
                f"{self.log.read_text()[-3000:]}"
            )
            time.sleep(0.2)
