"""Every shipped job configuration loads in the real binary, with the environment its deployment gives it.

For each pair below, `recon-pipeline checkpoints list --config FILE` runs with the deployment's environment (and
the checkpoint store pointed at a temporary directory, so nothing leaves the machine): exit 2 means the
configuration was refused (an unknown key, a bad value, an env variable that does not parse), and fails.
- infra/k8s/recon.toml + the StatefulSet's env, as the kubelet builds it (secretKeyRef, then `$(VAR)`);
- infra/k8s/recon.toml + the batch-verify CronJob's env;
- infra/k8s/recon.toml + infra/systemd/recon-pipeline.env.example, as systemd reads an EnvironmentFile;
- infra/compose/recon.toml + the compose file's environment of the job;
- the fleet: infra/k8s/recon.toml + the environment of each Deployment of infra/k8s/fleet (envFrom the ConfigMap
  generated from fleet.env, then the Secret recipe), + infra/systemd's env files of recon-worker@.service and
  recon-committer.service, and infra/compose/recon.toml + the compose fleet services' environment; each loaded with
  the role its deployment runs (`run --role` is not run here: `checkpoints list` loads the same configuration).
Secret values are stand-ins with the characters real ones have (`/`, `+`, `=`, `@`, spaces).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "infra" / "k8s"
FLEET = K8S / "fleet"
SYSTEMD = REPO / "infra" / "systemd"
SECRET_STAND_INS = {
    "catalog-uri": "postgres://recon:pa%40ss@postgres.db.svc:5432/recon_catalog",
    "truth-url": "postgres://verifier:pa%40ss@ledger.db.svc:5432/ledger",
    "s3-access-key-id": "AKIAEXAMPLE0123456789",
    "s3-secret-access-key": "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY=",
    "kafka-sasl-password": "p@ss w0rd!",
}


def kubelet_env(
    container: dict, secret: dict[str, str], config_maps: dict[str, dict[str, str]] | None = None
) -> dict[str, str]:
    """A container's environment as the kubelet builds it: `envFrom` ConfigMaps (from `config_maps`, by name)
    first, then `env` in order: secretKeyRef values from `secret`, `$(VAR)` expanded from variables defined
    earlier (an unknown reference stays literal, `$$` is a literal `$`)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        name = source["configMapRef"]["name"]
        env.update((config_maps or {})[name])
    for e in container.get("env", []):
        ref = e.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            env[e["name"]] = secret[ref["key"]]
            continue

        def expand(m: re.Match) -> str:
            return "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0))

        env[e["name"]] = re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)", expand, e.get("value", ""))
    return env


def systemd_env_file(text: str) -> dict[str, str]:
    """KEY=VALUE lines as systemd.exec(5) reads an EnvironmentFile (one line per assignment): `#`/`;` comments,
    a '...' value verbatim, a "..." value with \\ escapes of "\\`$, an unquoted value with backslash escapes and
    its other quotes preserved."""
    env = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;" or "=" not in line:
            continue
        key, value = (s.strip() for s in line.split("=", 1))
        if len(value) >= 2 and value[0] == value[-1] == "'":
            value = value[1:-1]
        elif len(value) >= 2 and value[0] == value[-1] == '"':
            value = re.sub(r'\\(["\\`$])', r"\1", value[1:-1])
        else:
            value = re.sub(r"\\(.)", r"\1", value)
        env[key] = value
    return env


def env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of a kustomize `envs:` file (configMapGenerator): `#` comments, values verbatim."""
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, value = line.split("=", 1)
            out[key] = value
    return out


def fleet_config_maps() -> dict[str, dict[str, str]]:
    """The ConfigMaps infra/k8s/fleet generates (name -> data) from its env files."""
    k = yaml.safe_load((FLEET / "kustomization.yaml").read_text())
    out: dict[str, dict[str, str]] = {}
    for gen in k.get("configMapGenerator", []):
        data: dict[str, str] = {}
        for f in gen.get("envs", []):
            data.update(env_file(FLEET / f))
        out[gen["name"]] = data
    return out


def fleet_container(file: str) -> dict:
    """The container of the Deployment in infra/k8s/fleet/`file`."""
    docs = [d for d in yaml.safe_load_all((FLEET / file).read_text()) if d and d.get("kind") == "Deployment"]
    if len(docs) != 1:
        raise SystemExit(f"job_configs: expected one Deployment in infra/k8s/fleet/{file}")
    return docs[0]["spec"]["template"]["spec"]["containers"][0]


def fleet_env(file: str, secret: dict[str, str]) -> dict[str, str]:
    return kubelet_env(fleet_container(file), secret, fleet_config_maps())


def workload_container(file: str, kind: str) -> dict:
    for doc in yaml.safe_load_all((K8S / file).read_text()):
        if doc and doc.get("kind") == kind:
            spec = doc["spec"]
            if kind == "CronJob":
                spec = spec["jobTemplate"]["spec"]
            return spec["template"]["spec"]["containers"][0]
    raise SystemExit(f"job_configs: no {kind} in infra/k8s/{file}")


def cases() -> list[tuple[str, Path, dict[str, str]]]:
    compose = yaml.safe_load((REPO / "infra" / "compose" / "docker-compose.yml").read_text())
    return [
        (
            "k8s StatefulSet",
            K8S / "recon.toml",
            kubelet_env(workload_container("statefulset.yaml", "StatefulSet"), SECRET_STAND_INS),
        ),
        (
            "k8s CronJob",
            K8S / "recon.toml",
            kubelet_env(workload_container("batch-verify-cronjob.yaml", "CronJob"), SECRET_STAND_INS),
        ),
        (
            "systemd env file",
            K8S / "recon.toml",
            systemd_env_file((REPO / "infra" / "systemd" / "recon-pipeline.env.example").read_text()),
        ),
        (
            "compose",
            REPO / "infra" / "compose" / "recon.toml",
            {k: str(v) for k, v in compose["services"]["recon-pipeline"]["environment"].items()},
        ),
        ("k8s fleet workers", K8S / "recon.toml", fleet_env("fleet-workers-deployment.yaml", SECRET_STAND_INS)),
        ("k8s fleet committer", K8S / "recon.toml", fleet_env("fleet-committer-deployment.yaml", SECRET_STAND_INS)),
        (
            "systemd fleet env files",
            K8S / "recon.toml",
            systemd_env_file((SYSTEMD / "recon-pipeline.env.example").read_text())
            | systemd_env_file((SYSTEMD / "recon-fleet.env.example").read_text())
            | systemd_unit_env(SYSTEMD / "recon-worker@.service", "1"),
        ),
        *(
            (
                f"compose {service}",
                REPO / "infra" / "compose" / "recon.toml",
                {k: str(v) for k, v in compose["services"][service]["environment"].items()},
            )
            for service in ("recon-fleet-worker", "recon-fleet-committer")
        ),
    ]


def systemd_unit_env(unit: Path, instance: str) -> dict[str, str]:
    """`Environment=` lines of a unit (one assignment each, as written here), `%i` replaced by `instance`."""
    out = {}
    for line in unit.read_text().splitlines():
        if line.startswith("Environment="):
            key, value = line[len("Environment=") :].replace("%i", instance).split("=", 1)
            out[key] = value
    return out


def binary() -> Path:
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    path = Path(os.environ.get("RECON_RECON_PIPELINE_BIN") or target / "debug" / "recon-pipeline")
    if not path.exists():
        raise SystemExit(f"job_configs: {path} not found: cargo build -p recon-pipeline (infra/deploy/check does)")
    return path


def main() -> int:
    problems = []
    for name, config, recipe in cases():
        if not any(k.startswith("RECON__CATALOG__URI") for k in recipe):
            problems.append(f"{name}: the environment sets no RECON__CATALOG__URI (the shipped configs leave it empty)")
        with tempfile.TemporaryDirectory(prefix="recon-config-") as tmp:
            env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RECON__"))}
            env.update(recipe)
            env["RECON__CHECKPOINT__STORE"] = f"{tmp}/checkpoints"  # local: nothing is sent anywhere
            r = subprocess.run(
                [str(binary()), "checkpoints", "list", "--config", str(config)],
                check=False,
                capture_output=True,
                text=True,
                timeout=60,
                env=env,
                cwd=tmp,
            )
        fleet = name.startswith(("k8s fleet", "systemd fleet", "compose recon-fleet"))
        if fleet and recipe.get("RECON__FLEET__TASKS", "0") in ("", "0"):
            problems.append(f"{name}: the environment sets no RECON__FLEET__TASKS > 0")
        if r.returncode != 0 or "gen" not in r.stdout:
            problems.append(
                f"{name}: {config.relative_to(REPO)} with its environment: exit {r.returncode}: {r.stderr.strip()}"
            )
        leaked = [k for k, v in SECRET_STAND_INS.items() if v in r.stdout + r.stderr]
        if leaked:
            problems.append(f"{name}: the output shows the Secret's {leaked}")
    for p in problems:
        print(f"FAIL {p}")
    print(f"job configs: {len(cases())} deployment configurations loaded by recon-pipeline; {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
