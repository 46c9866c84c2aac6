"""Fixtures of the Python engine tests (tests/python/run is how to run them).

A test needs the local services (infra/local/up; eval "$(infra/local/env)"). Without RECON_SERVICES=1 it is
skipped with a loud reason, unless RECON_REQUIRE_SERVICES=1 (set by infra/local/test), which makes it fail.
"""

from __future__ import annotations

import os
import time
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from recon_job import Services  # noqa: E402


@pytest.fixture(scope="session")
def services() -> Services:
    svc = Services.from_env()
    if svc is None:
        if os.environ.get("RECON_REQUIRE_SERVICES") == "1":
            pytest.fail("RECON_REQUIRE_SERVICES=1 but RECON_SERVICES is not set: eval \"$(infra/local/env)\"")
        pytest.skip("*** real-service test: RECON_SERVICES is not set, it did NOT run. "
                    "Run infra/local/up, then eval \"$(infra/local/env)\" ***")
    return svc


# Engines hand back naive datetimes in the process's local zone (PySpark's collect): run in UTC, the zone every
# engine session here uses, so that a naive value means UTC.
os.environ["TZ"] = "UTC"
time.tzset()
