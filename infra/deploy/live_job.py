"""Runs the real streaming job the way infra/k8s deploys it, and checks the deployment against it.

On the local services (infra/local/up; skipped loudly without RECON_SERVICES=1, a failure with
RECON_REQUIRE_SERVICES=1):
1. publishes a little seeded traffic (with duplicates and poison records) to a topic of its own;
2. starts `recon-pipeline run` with infra/k8s/recon.toml, only its addresses swapped for the local services
   (so a key the code does not know fails here), and with the environment the StatefulSet builds from its
   Secret, `$(VAR)` references expanded as the kubelet does (so the RECON__* recipe is what supplies the
   catalog URI, the S3 keys and the SASL password);
3. waits (polling, with a deadline) until /metrics shows every series the job registers, then checks that every
   job metric the dashboard and the alert rules use is in the real /metrics output, /healthz and /readyz answer
   200, and the compose file's healthcheck command passes against the job;
4. sends SIGTERM and measures the graceful stop (final checkpoint + commit) against the StatefulSet's
   terminationGracePeriodSeconds; the exit code must be 0;
5. checks that no secret value appears in the job's output.
Then the same for a fleet (infra/k8s/fleet): a worker and a committer process, each with the args and the
environment of its Deployment (fleet.env's ConfigMap through envFrom, the Secret recipe), on the same recon.toml
with [fleet] tasks swapped for 2 (the topic here has 2 partitions; K <= partitions); every fleet metric
(metric_names.FLEET_*) appears on the /metrics of the role that exports it, with the job's per-checkpoint metrics
on the worker's; the fleet panels of the dashboard answer with data from a real Prometheus scraping both, the
health and fleet alerts stay silent; /healthz, /readyz and compose's healthcheck answer; SIGTERM -> exit 0 within
each Deployment's grace period; no secret in either output. A single-process job never exports the fleet
metrics, so that is where they are checked live.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Callable

import tomli_w
import yaml

import job_configs
import metric_names
from prometheus_server import Prometheus

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "infra" / "k8s"
COMPOSE = REPO / "infra" / "compose" / "docker-compose.yml"
DEADLINE_S = 120


def services() -> dict[str, str] | None:
    if os.environ.get("RECON_SERVICES") != "1":
        if os.environ.get("RECON_REQUIRE_SERVICES") == "1":
            sys.exit(
                "live_job: RECON_REQUIRE_SERVICES=1 but RECON_SERVICES is not set; run infra/local/up and "
                'eval "$(infra/local/env)"'
            )
        print(
            "\n*** SKIPPED live_job: real-service check, RECON_SERVICES is not set. It did NOT run. Run "
            'infra/local/up then eval "$(infra/local/env)". ***\n',
            file=sys.stderr,
        )
        return None
    names = [
        "RECON_KAFKA_BOOTSTRAP",
        "RECON_PG_CATALOG_URL",
        "RECON_S3_ENDPOINT",
        "RECON_S3_ACCESS_KEY_ID",
        "RECON_S3_SECRET_ACCESS_KEY",
        "RECON_S3_REGION",
        "RECON_S3_WAREHOUSE_BUCKET",
        "RECON_S3_CHECKPOINT_BUCKET",
    ]
    missing = [n for n in names if not os.environ.get(n)]
    if missing:
        sys.exit(f'live_job: RECON_SERVICES=1 but {missing} not set: eval "$(infra/local/env)"')
    return {n: os.environ[n] for n in names}


def binary() -> Path:
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    path = Path(os.environ.get("RECON_RECON_PIPELINE_BIN") or target / "debug" / "recon-pipeline")
    if not path.exists():
        sys.exit(f"live_job: {path} not found: cargo build -p recon-pipeline (infra/deploy/check does)")
    return path


def statefulset() -> dict:
    return yaml.safe_load((K8S / "statefulset.yaml").read_text())


def local_config(name: str, svc: dict[str, str]) -> tuple[dict, list[str]]:
    """infra/k8s/recon.toml with the deployment's addresses replaced by the local services'; returns the
    config and the keys replaced."""
    cfg = tomllib.loads((K8S / "recon.toml").read_text())
    endpoint, region = svc["RECON_S3_ENDPOINT"], svc["RECON_S3_REGION"]
    swaps = {
        ("job_id",): name,
        ("source", "brokers"): svc["RECON_KAFKA_BOOTSTRAP"],
        ("source", "topic"): f"{name}.events",
        # SASL_SSL settings cannot talk to the local PLAINTEXT broker (the password still comes from the env).
        ("source", "properties"): {},
        ("catalog", "warehouse"): f"s3://{svc['RECON_S3_WAREHOUSE_BUCKET']}/{name}",
        ("catalog", "namespace"): name,
        ("catalog", "properties"): {
            "s3.endpoint": endpoint,
            "s3.region": region,
            "s3.path-style-access": "true",
            "s3.disable-ec2-metadata": "true",
        },
        ("checkpoint", "store"): f"s3://{svc['RECON_S3_CHECKPOINT_BUCKET']}/{name}",
        ("checkpoint", "store_options"): {
            "aws_endpoint": endpoint,
            "aws_allow_http": "true",
            "aws_region": region,
            "aws_virtual_hosted_style_request": "false",
        },
        ("observability", "listen"): "127.0.0.1:0",
    }
    for path, value in swaps.items():
        table = cfg
        for key in path[:-1]:
            table = table.setdefault(key, {})
        table[path[-1]] = value
    return cfg, [".".join(p) for p in swaps]


def statefulset_env(secret: dict[str, str]) -> dict[str, str]:
    """The StatefulSet container's environment, as the kubelet builds it."""
    return job_configs.kubelet_env(statefulset()["spec"]["template"]["spec"]["containers"][0], secret)


def run_checked(args: list[str], timeout_s: float, log: Path, env: dict[str, str] | None = None) -> str:
    with open(log, "wb") as out:
        p = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        rc = p.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(timeout=30)
        raise AssertionError(f"{args[1]} did not finish within {timeout_s}s:\n{log.read_text()[-3000:]}")
    text = log.read_text(errors="replace")
    assert rc == 0, f"{' '.join(args[:2])} exited {rc}:\n{text[-3000:]}"
    return text


def http_get(base: str, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(base + path, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def series_names(exposition: str) -> set[str]:
    return {m.group(1) for m in re.finditer(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)[{ ]", exposition, re.MULTILINE)}


def wait_for(what: str, child: subprocess.Popen, log: Path, check, deadline: float):
    """Polls `check` every 100 ms until it returns something truthy; fails when the job exits or time is up."""
    while True:
        got = check()
        if got:
            return got
        if child.poll() is not None:
            raise AssertionError(
                f"the job exited ({child.returncode}) while waiting for {what}:\n{log.read_text()[-4000:]}"
            )
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {DEADLINE_S}s waiting for {what}:\n{log.read_text()[-4000:]}")
        time.sleep(0.1)


def is_fleet(name: str) -> bool:
    return metric_names.strip_series_suffix(name, metric_names.source_metrics()) in metric_names.FLEET_METRICS


def single_job_query(names: set[str]) -> bool:
    """A dashboard query a single-process job must answer: not batch-verify's, the optional outputs' or a fleet's."""
    return not any(
        n.startswith(metric_names.VERIFY_PREFIX) or n in metric_names.OUTPUT_METRICS or is_fleet(n) for n in names
    )


def fleet_query(names: set[str]) -> bool:
    """A dashboard query of the fleet row (it uses a fleet metric)."""
    return any(is_fleet(n) for n in names)


# Alerts whose expression must return nothing while the job is healthy (a false positive pages someone). The
# rejected-rate alert is left out: this traffic is 5% poison on purpose; the batch-verify ones have no data here.
HEALTHY_SILENT = {
    "ReconJobDown", "ReconJobAbsent", "ReconNotReady", "ReconCheckpointsStalled", "ReconCommitStale",
    "ReconCommitStaleCritical", "ReconNoCommitSinceStart", "ReconConsumerLagHigh", "ReconRestarted",
    "ReconRestartLoop",
}  # fmt: skip
# ... and while a fleet is (no data for a single-process job: silent there too).
FLEET_SILENT = {"ReconFleetTasksUnowned", "ReconCommitterDown", "ReconCommitterLagging", "ReconFleetRebalancing"}


def check_with_prometheus(
    target: str | list[str], work: Path, wanted: Callable[[set[str]], bool] = single_job_query
) -> str:
    """A real Prometheus scrapes the job (or a fleet's processes): every dashboard query `wanted` picks (by its
    metric names) returns data, and the alert expressions of HEALTHY_SILENT and FLEET_SILENT return nothing."""
    binary = os.environ.get("RECON_PROMETHEUS_BIN")
    if not binary:
        print("live_job: *** Prometheus queries SKIPPED: RECON_PROMETHEUS_BIN is not set (infra/deploy/check sets it)")
        return "Prometheus queries skipped"
    with Prometheus(Path(binary), work, target, "recon-pipeline") as prom:
        prom.wait_for_samples(3)
        empty, asked = [], 0
        for where, expr in metric_names.dashboard_exprs(metric_names.dashboard()):
            if not wanted(metric_names.names_in(expr)) or where.startswith("annotation"):
                continue
            asked += 1
            if not prom.query(expr):
                empty.append(f"{where}: {expr}")
        assert asked, "no dashboard query selected"
        assert not empty, "dashboard queries with no data from a running job:\n" + "\n".join(empty)
        silent = HEALTHY_SILENT | FLEET_SILENT
        rules = [r for r in metric_names.rules() if r.get("alert") in silent]
        assert len(rules) == len(silent), f"alerts renamed? {sorted(silent)}"
        firing = [r["alert"] for r in rules if prom.query(r["expr"])]
        assert not firing, f"alert expressions true for a healthy job: {firing}"
    return f"Prometheus answers all {asked} dashboard queries and keeps {len(rules)} alerts silent"


def compose_healthcheck(host: str, port: int, service: str = "recon-pipeline") -> list[str]:
    test = yaml.safe_load(COMPOSE.read_text())["services"][service]["healthcheck"]["test"]
    assert test[0] == "CMD", test
    return [a.replace("/dev/tcp/127.0.0.1/9464", f"/dev/tcp/{host}/{port}") for a in test[1:]]


def terminate(child: subprocess.Popen, log: Path, grace: float, what: str) -> tuple[int, float]:
    """SIGTERM, then the exit code and how long the stop took; fails past `grace` seconds."""
    t_term = time.monotonic()
    child.send_signal(signal.SIGTERM)
    try:
        rc = child.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"SIGTERM: {what} did not stop within {grace} s:\n{log.read_text()[-4000:]}")
    return rc, time.monotonic() - t_term


def prepare(work: Path, bin_path: Path, svc: dict, name: str, partitions: int, trips: int, seed: int):
    """Publishes a little noisy traffic to `<name>.events` and writes `work/recon.toml` for it."""
    traffic = (
        f"generate --brokers {svc['RECON_KAFKA_BOOTSTRAP']} --topic {name}.events --partitions {partitions} "
        f"--trips {trips} --seed {seed} --poison-rate 0.05 --duplicate-rate 0.05 --no-progress"
    )
    run_checked([str(bin_path), *traffic.split(), "--truth-jsonl", str(work / "truth.jsonl")], 120, work / "gen.log")
    cfg, swapped = local_config(name, svc)
    (work / "recon.toml").write_text(tomli_w.dumps(cfg))
    return cfg, swapped


def main() -> int:
    svc = services()
    if svc is None:
        return 0
    bin_path = binary()
    name = f"deploy_{uuid.uuid4().hex[:12]}"
    secret = {  # the Secret's keys (infra/k8s/secret.example.yaml), with the local services' values
        "catalog-uri": svc["RECON_PG_CATALOG_URL"],
        "s3-access-key-id": svc["RECON_S3_ACCESS_KEY_ID"],
        "s3-secret-access-key": svc["RECON_S3_SECRET_ACCESS_KEY"],
        "kafka-sasl-password": f"sasl-{uuid.uuid4().hex}",  # unused by PLAINTEXT; must never be printed
        "truth-url": "unused",
    }
    with tempfile.TemporaryDirectory(prefix="recon-deploy-") as tmp:
        work = Path(tmp)
        cfg, swapped = prepare(work, bin_path, svc, name, partitions=2, trips=300, seed=8)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RECON__"))}
        recipe = statefulset_env(secret)
        env.update(recipe)
        print(
            f"live_job: job {name}: infra/k8s/recon.toml with {', '.join(swapped)} swapped for the local services; "
            f"environment from statefulset.yaml: {', '.join(sorted(recipe))}"
        )
        log = work / "run.log"
        t_start = time.monotonic()
        with open(log, "wb") as out:
            # In the temporary directory: a relative default (the SQLite catalog) would land there, visibly.
            child = subprocess.Popen(
                [str(bin_path), "run", "--config", str(work / "recon.toml")],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=work,
            )
        try:
            deadline = time.monotonic() + DEADLINE_S
            bound = wait_for(
                "the metrics address in the log",
                child,
                log,
                lambda: re.search(r'"bound":"([0-9.]+):(\d+)"', log.read_text(errors="replace")),
                deadline,
            )
            host, port = bound.group(1), int(bound.group(2))
            base = f"http://{host}:{port}"
            assert http_get(base, "/healthz")[0] == 200, "/healthz is not 200"
            registered = metric_names.source_metrics()
            # The optional outputs are off in infra/k8s/recon.toml (their defaults): their metrics never appear.
            optional = metric_names.job_series(
                {n: k for n, k in registered.items() if n in metric_names.OUTPUT_METRICS}
            )
            # A fleet's metrics never appear on a single-process job: fleet_main checks them on a live fleet.
            fleet = metric_names.job_series({n: k for n, k in registered.items() if n in metric_names.FLEET_METRICS})
            expected = metric_names.job_series(registered) - optional - fleet
            body = wait_for(
                "every registered metric on /metrics",
                child,
                log,
                lambda: (b := http_get(base, "/metrics")[1]) and expected <= series_names(b) and b,
                deadline,
            )
            t_ready = time.monotonic() - t_start
            live = series_names(body)
            status, text = http_get(base, "/readyz")
            assert status == 200, f"/readyz answered {status} {text!r} after a checkpoint"
            problems: list[str] = []
            dash, rules = metric_names.used_names(problems)
            assert not problems, problems
            job_used = {
                n
                for n in dash | rules
                if n not in metric_names.PROMETHEUS_NAMES
                and not n.startswith(metric_names.VERIFY_PREFIX)
                and n not in metric_names.OUTPUT_METRICS
                and not is_fleet(n)
            }
            missing = sorted(job_used - live)
            assert not missing, (
                f"the dashboard or the rules use {missing}, which the running job does not export:\n{body}"
            )
            prom = check_with_prometheus(f"{host}:{port}", work)
            hc = subprocess.run(
                compose_healthcheck(host, port), check=False, capture_output=True, text=True, timeout=10
            )
            assert hc.returncode == 0, f"the compose healthcheck failed against a ready job: {hc.stderr}"
            grace = statefulset()["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
            rc, stop_s = terminate(child, log, grace, "the job")
        finally:
            if child.poll() is None:
                child.kill()
                child.wait(timeout=30)
        out = log.read_text(errors="replace")
        assert rc == 0 and "stopped cleanly" in out, (
            f"SIGTERM: exit {rc}, expected 0 and 'stopped cleanly':\n{out[-4000:]}"
        )
        leaked = [k for k in ("kafka-sasl-password", "s3-secret-access-key", "catalog-uri") if secret[k] in out]
        assert not leaked, f"the job's output contains the Secret's {leaked}"
        print(
            f"live_job: ok: the {len(job_used)} job metrics the dashboard and rules use are among the {len(live)} live "
            f"series (all present {t_ready:.1f} s after start); {prom}; /healthz, /readyz and the compose healthcheck answer; "
            f"SIGTERM -> exit 0 in {stop_s:.2f} s (grace {grace} s); no secret in the output"
        )
    fleet_main(svc, bin_path, secret)
    return 0


def deployment(file: str) -> dict:
    return next(
        d for d in yaml.safe_load_all((K8S / "fleet" / file).read_text()) if d and d.get("kind") == "Deployment"
    )


FLEET_TASKS_HERE = 2  # the topic's partitions here; fleet.env's K needs that many partitions at least


def fleet_main(svc: dict[str, str], bin_path: Path, secret: dict[str, str]) -> None:
    """A worker and a committer as infra/k8s/fleet deploys them (see the module's documentation)."""
    name = f"deploy_{uuid.uuid4().hex[:12]}"
    registered = metric_names.source_metrics()
    roles = {
        "worker": (
            "fleet-workers-deployment.yaml",
            metric_names.FLEET_WORKER_METRICS | metric_names.FLEET_WORKER_JOB_METRICS,
        ),
        "committer": (
            "fleet-committer-deployment.yaml",
            metric_names.FLEET_COMMITTER_METRICS | metric_names.FLEET_COMMITTER_JOB_METRICS,
        ),
    }
    with tempfile.TemporaryDirectory(prefix="recon-deploy-fleet-") as tmp:
        work = Path(tmp)
        cfg, swapped = prepare(work, bin_path, svc, name, partitions=FLEET_TASKS_HERE, trips=200, seed=9)
        children: dict[str, tuple[subprocess.Popen, Path, int]] = {}
        try:
            for role, (file, _) in roles.items():
                d = deployment(file)
                container = d["spec"]["template"]["spec"]["containers"][0]
                env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RECON__"))}
                recipe = job_configs.fleet_env(file, secret)
                assert int(recipe.get("RECON__FLEET__TASKS", "0")) >= FLEET_TASKS_HERE, recipe.get(
                    "RECON__FLEET__TASKS"
                )
                recipe["RECON__FLEET__TASKS"] = str(FLEET_TASKS_HERE)
                env.update(recipe)
                args = [str(work / "recon.toml") if a == "/etc/recon/recon.toml" else a for a in container["args"]]
                log = work / f"{role}.log"
                with open(log, "wb") as out:
                    child = subprocess.Popen(
                        [str(bin_path), *args], stdout=out, stderr=subprocess.STDOUT, env=env, cwd=work
                    )
                children[role] = (child, log, d["spec"]["template"]["spec"]["terminationGracePeriodSeconds"])
            print(
                f"live_job: fleet {name}: a worker and a committer with the args and environment of infra/k8s/fleet's "
                f"Deployments (RECON__FLEET__TASKS={FLEET_TASKS_HERE}, the topic's partitions), "
                f"{', '.join(swapped)} swapped"
            )
            t_start = time.monotonic()
            deadline = t_start + DEADLINE_S
            bases, lives = {}, {}
            for role, (child, log, _) in children.items():
                bound = wait_for(
                    f"the {role}'s metrics address in the log",
                    child,
                    log,
                    lambda: re.search(r'"bound":"([0-9.]+):(\d+)"', log.read_text(errors="replace")),
                    deadline,
                )
                bases[role] = (bound.group(1), int(bound.group(2)))
            for role, (child, log, _) in children.items():
                host, port = bases[role]
                base = f"http://{host}:{port}"
                assert http_get(base, "/healthz")[0] == 200, f"{role}: /healthz is not 200"
                want = metric_names.job_series({n: registered[n] for n in roles[role][1]})
                body = wait_for(
                    f"the {role}'s metrics {sorted(roles[role][1])} on /metrics",
                    child,
                    log,
                    lambda: (b := http_get(base, "/metrics")[1]) and want <= series_names(b) and b,
                    deadline,
                )
                lives[role] = series_names(body)
                status, text = http_get(base, "/readyz")
                assert status == 200, f"{role}: /readyz answered {status} {text!r}"
            t_ready = time.monotonic() - t_start
            problems: list[str] = []
            dash, rules = metric_names.used_names(problems)
            assert not problems, problems
            fleet_used = {n for n in dash | rules if is_fleet(n)}
            missing = sorted(fleet_used - lives["worker"] - lives["committer"])
            assert not missing, f"the dashboard or the rules use {missing}, which neither fleet process exports"
            prom = check_with_prometheus([f"{h}:{p}" for h, p in bases.values()], work, fleet_query)
            host, port = bases["worker"]
            hc = subprocess.run(
                compose_healthcheck(host, port, "recon-fleet-worker"),
                check=False,
                capture_output=True,
                text=True,
                timeout=10,
            )
            assert hc.returncode == 0, f"the compose fleet healthcheck failed against a ready worker: {hc.stderr}"
            stops = []
            # Workers first (their final checkpoints), then the committer (a last commit of them).
            for role, (child, log, grace) in children.items():
                rc, stop_s = terminate(child, log, grace, f"the {role}")
                out = log.read_text(errors="replace")
                assert rc == 0 and f"{role} stopped cleanly" in out, (
                    f"SIGTERM: {role} exit {rc}, expected 0 and '{role} stopped cleanly':\n{out[-4000:]}"
                )
                leaked = [k for k in ("kafka-sasl-password", "s3-secret-access-key", "catalog-uri") if secret[k] in out]
                assert not leaked, f"the {role}'s output contains the Secret's {leaked}"
                stops.append(f"{role} {stop_s:.2f} s (grace {grace} s)")
        finally:
            for child, _, _ in children.values():
                if child.poll() is None:
                    child.kill()
                    child.wait(timeout=30)
        print(
            f"live_job: fleet ok: the {len(metric_names.FLEET_METRICS)} fleet metrics live on the worker's and the "
            f"committer's /metrics (all {t_ready:.1f} s after start), the {len(fleet_used)} the dashboard and rules use "
            f"among them; {prom}; /healthz, /readyz and the compose healthcheck answer; SIGTERM -> exit 0: "
            f"{', '.join(stops)}; no secret in the output"
        )


if __name__ == "__main__":
    try:
        sys.exit(main())
    except AssertionError as e:
        print(f"FAIL live_job: {e}")
        sys.exit(1)
