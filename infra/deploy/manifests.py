"""Static checks of recon's deployment files (infra/deploy/check runs them; exit 1 on any problem).

- Kubernetes (infra/k8s): every resource against the Kubernetes JSON schemas bundled in `kubernetes-validate`
  (strict: unknown fields are errors) for the oldest and the newest version we support; the kustomization lists
  every file; names, labels, ports, secret keys and `$(VAR)` references agree across resources; one replica; the
  grace period covers recon.toml's checkpoint interval + commit timeout.
- The fleet (infra/k8s/fleet, a kustomize Component): its resources against the same schemas; the component
  lists every file; workers (a Deployment, `--role worker`) and the committer (one replica, Recreate, `--role
  committer`) with the StatefulSet's probes, port, secret recipe, grace period and security; the ConfigMap of K
  they read; selectors disjoint, each PDB selecting one of them, the metrics Service both. `kubectl kustomize`
  (its built-in kustomize, offline) renders it both ways the README gives: the single-process pieces are gone,
  the fleet's are there, and nothing else changed.
- Compose (infra/compose): the compose-spec JSON schema (vendored by `check-jsonschema`); every mounted path and
  build context exists; the stop grace period equals Kubernetes'.
- Dockerfile (infra/docker): parses (BuildKit's parser); stages, COPY sources, the binaries, the toolchain
  version, the user and the port agree with the rest.
- systemd (infra/systemd): `systemd-analyze verify` prints nothing; TimeoutStopSec equals the grace period (the
  fleet's units too, which also conflict with recon-pipeline.service and run their role).

Usage: python manifests.py   (from infra/deploy/check, inside its virtualenv)
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import dockerfile
import jsonschema
import kubernetes_validate
import yaml

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
K8S = INFRA / "k8s"
FLEET = K8S / "fleet"
# Oldest supported (CronJob timeZone and PDB unhealthyPodEvictionPolicy are GA there) and newest bundled.
K8S_VERSIONS = ("1.31.0", "1.37.0")
NOT_IN_KUSTOMIZATION = {"kustomization.yaml", "secret.example.yaml"}


class Problems:
    """Collects what is wrong, so that one run reports everything."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, where: str, what: str) -> None:
        self.items.append(f"{where}: {what}")

    def expect(self, ok: bool, where: str, what: str) -> None:
        if not ok:
            self.add(where, what)


def rel(p: Path) -> str:
    return str(p.relative_to(REPO))


def load_yaml_docs(path: Path) -> list[dict]:
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def k8s_resources() -> dict[str, list[dict]]:
    """Every YAML file of infra/k8s (kustomization.yaml aside) -> its resources."""
    return {p.name: load_yaml_docs(p) for p in sorted(K8S.glob("*.yaml")) if p.name != "kustomization.yaml"}


def by_kind(resources: dict[str, list[dict]], kind: str) -> list[dict]:
    return [r for docs in resources.values() for r in docs if r.get("kind") == kind]


def one(resources: dict[str, list[dict]], kind: str, problems: Problems) -> dict:
    found = by_kind(resources, kind)
    problems.expect(len(found) == 1, "infra/k8s", f"expected exactly one {kind}, found {len(found)}")
    return found[0] if found else {}


def job_config(path: Path) -> dict:
    with open(path, "rb") as f:
        return tomllib.load(f)


def grace_budget_s(cfg: dict) -> float:
    """The least grace period recon.toml allows: one checkpoint interval + one commit timeout."""
    return (cfg["checkpoint"]["interval_ms"] + cfg["commit"]["timeout_ms"]) / 1000


def listen_port(cfg: dict) -> int:
    return int(cfg["observability"]["listen"].rsplit(":", 1)[1])


# --- Kubernetes ---------------------------------------------------------------------------------------------------
def check_k8s_schemas(resources: dict[str, list[dict]], problems: Problems) -> int:
    n = 0
    for name, docs in resources.items():
        for doc in docs:
            for version in K8S_VERSIONS:
                where = (
                    f"infra/k8s/{name} {doc.get('kind')}/{doc.get('metadata', {}).get('name')} (Kubernetes {version})"
                )
                try:
                    kubernetes_validate.validate(doc, version, strict=True)
                except kubernetes_validate.ValidationError as e:
                    path = ".".join(str(p) for p in e.path)
                    problems.add(where, f"{path}: {e.message}")
                except (kubernetes_validate.SchemaNotFoundError, kubernetes_validate.InvalidSchemaError) as e:
                    problems.add(where, f"no schema: {e}")
            n += 1
    return n


def check_kustomization(problems: Problems) -> dict:
    k = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(k.get("resources", []))
    present = {p.name for p in K8S.glob("*.yaml")} - NOT_IN_KUSTOMIZATION
    for missing in sorted(present - listed):
        problems.add("infra/k8s/kustomization.yaml", f"{missing} is not listed under resources")
    for ghost in sorted(listed - present):
        problems.add("infra/k8s/kustomization.yaml", f"resource {ghost} does not exist")
    for gen in k.get("configMapGenerator", []):
        for f in gen.get("files", []):
            problems.expect(
                (K8S / f.split("=")[-1]).exists(),
                "infra/k8s/kustomization.yaml",
                f"configMapGenerator file {f} does not exist",
            )
    return k


def pod_spec(workload: dict) -> dict:
    spec = workload.get("spec", {})
    if workload.get("kind") == "CronJob":
        spec = spec.get("jobTemplate", {}).get("spec", {})
    return spec.get("template", {}).get("spec", {})


def check_env(container: dict, secret_keys: set[str], where: str, problems: Problems) -> None:
    """Secret keys exist; a $(VAR) reference names a variable defined EARLIER (kubelet expands only those)."""
    defined: set[str] = set()
    for e in container.get("env", []):
        ref = e.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            problems.expect(
                ref.get("name") == "recon-secrets",
                where,
                f"env {e['name']}: secret {ref.get('name')!r} is not recon-secrets",
            )
            problems.expect(
                ref.get("key") in secret_keys,
                where,
                f"env {e['name']}: key {ref.get('key')!r} is not in secret.example.yaml",
            )
        for var in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", e.get("value", "")):
            problems.expect(
                var in defined,
                where,
                f"env {e['name']}: $({var}) is not defined above it, Kubernetes would pass it literally",
            )
        defined.add(e["name"])


def check_k8s_consistency(resources: dict[str, list[dict]], kustomization: dict, problems: Problems) -> None:
    cfg = job_config(K8S / "recon.toml")
    sts = one(resources, "StatefulSet", problems)
    cron = one(resources, "CronJob", problems)
    pdb = one(resources, "PodDisruptionBudget", problems)
    secret = one(resources, "Secret", problems)
    services = by_kind(resources, "Service")
    where = "infra/k8s/statefulset.yaml"
    spec = sts.get("spec", {})
    problems.expect(
        spec.get("replicas") == 1, where, "replicas must be 1: one instance owns the partitions and the checkpoint log"
    )
    pod = pod_spec(sts)
    labels = spec.get("template", {}).get("metadata", {}).get("labels", {})
    selector = spec.get("selector", {}).get("matchLabels", {})
    problems.expect(selector.items() <= labels.items(), where, "selector does not match the pod labels")
    grace = pod.get("terminationGracePeriodSeconds", 30)
    budget = grace_budget_s(cfg)
    problems.expect(
        grace >= budget,
        where,
        f"terminationGracePeriodSeconds {grace} < checkpoint.interval_ms + commit.timeout_ms = {budget:g} s",
    )
    secret_keys = set(secret.get("stringData", {}))
    port = listen_port(cfg)
    for c in pod.get("containers", []):
        ports = {p.get("name"): p.get("containerPort") for p in c.get("ports", [])}
        problems.expect(
            ports.get("metrics") == port,
            where,
            f"container port `metrics` {ports.get('metrics')} != recon.toml listen port {port}",
        )
        for probe, path in (("startupProbe", "/healthz"), ("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
            get = c.get(probe, {}).get("httpGet", {})
            problems.expect(
                get.get("path") == path and get.get("port") == "metrics",
                where,
                f"{probe} must GET {path} on port `metrics`",
            )
        problems.expect(
            "limits" in c.get("resources", {}) and "requests" in c.get("resources", {}),
            where,
            "resources need requests and limits",
        )
        check_env(c, secret_keys, where, problems)
    headless = [s for s in services if s["metadata"]["name"] == spec.get("serviceName")]
    problems.expect(
        len(headless) == 1 and headless[0]["spec"].get("clusterIP") == "None",
        where,
        f"serviceName {spec.get('serviceName')!r} must name a headless Service",
    )
    for s in services:
        problems.expect(
            s["spec"].get("selector", {}).items() <= labels.items(),
            "infra/k8s/services.yaml",
            f"{s['metadata']['name']}: selector does not match the pod labels",
        )
        problems.expect(
            any(p.get("port") == port for p in s["spec"].get("ports", [])),
            "infra/k8s/services.yaml",
            f"{s['metadata']['name']}: no port {port}",
        )
    problems.expect(
        any(s["metadata"].get("annotations", {}).get("prometheus.io/port") == str(port) for s in services),
        "infra/k8s/services.yaml",
        "no Service carries prometheus.io/port",
    )
    problems.expect(
        pdb.get("spec", {}).get("selector", {}).get("matchLabels", {}).items() <= labels.items(),
        "infra/k8s/pdb.yaml",
        "selector does not match the pod labels",
    )
    # The CronJob.
    where = "infra/k8s/batch-verify-cronjob.yaml"
    cspec = cron.get("spec", {})
    problems.expect(cspec.get("concurrencyPolicy") == "Forbid", where, "concurrencyPolicy must be Forbid")
    problems.expect(bool(cspec.get("timeZone")), where, "timeZone must be explicit")
    for c in pod_spec(cron).get("containers", []):
        check_env(c, secret_keys, where, problems)
    # Config and image names line up with the kustomization.
    generated = {g["name"] for g in kustomization.get("configMapGenerator", [])}
    images = {i["name"] for i in kustomization.get("images", [])}
    for w in (sts, cron):
        p = pod_spec(w)
        for v in p.get("volumes", []):
            if "configMap" in v:
                problems.expect(
                    v["configMap"]["name"] in generated,
                    f"{w['kind']} {w['metadata']['name']}",
                    f"ConfigMap {v['configMap']['name']!r} is not generated by kustomization.yaml",
                )
        for c in p.get("containers", []):
            problems.expect(
                c["image"].rsplit(":", 1)[0] in images,
                f"{w['kind']} {w['metadata']['name']}",
                f"image {c['image']} is not under kustomization.yaml images",
            )
        problems.expect(
            p.get("securityContext", {}).get("runAsNonRoot") is True,
            f"{w['kind']} {w['metadata']['name']}",
            "runAsNonRoot must be true",
        )


# --- the fleet (infra/k8s/fleet) ---------------------------------------------------------------------------------
def fleet_resources() -> dict[str, list[dict]]:
    return {
        f"fleet/{p.name}": load_yaml_docs(p) for p in sorted(FLEET.glob("*.yaml")) if p.name != "kustomization.yaml"
    }


def matches(selector: dict, labels: dict) -> bool:
    return selector.get("matchLabels", {}).items() <= labels.items()


def check_fleet(base: dict[str, list[dict]], kustomization: dict, problems: Problems) -> int:
    """Schemas, the component's file list and cross-references of infra/k8s/fleet; returns resources checked."""
    resources = fleet_resources()
    n = check_k8s_schemas(resources, problems)
    where = "infra/k8s/fleet/kustomization.yaml"
    comp = yaml.safe_load((FLEET / "kustomization.yaml").read_text())
    problems.expect(
        comp.get("kind") == "Component", where, "must be a kustomize Component (a base cannot contain its overlay)"
    )
    listed = set(comp.get("resources", []))
    present = {p.name for p in FLEET.glob("*.yaml")} - {"kustomization.yaml"}
    for missing in sorted(present - listed):
        problems.add(where, f"{missing} is not listed under resources")
    for ghost in sorted(listed - present):
        problems.add(where, f"resource {ghost} does not exist")
    generated = {}
    for gen in comp.get("configMapGenerator", []):
        for f in gen.get("envs", []) + gen.get("files", []):
            problems.expect((FLEET / f).exists(), where, f"configMapGenerator file {f} does not exist")
        generated[gen["name"]] = gen
    deployments = {d["metadata"]["name"]: d for d in by_kind(resources, "Deployment")}
    workers, committer = deployments.get("recon-fleet-worker"), deployments.get("recon-fleet-committer")
    problems.expect(
        set(deployments) == {"recon-fleet-worker", "recon-fleet-committer"},
        "infra/k8s/fleet",
        f"expected the Deployments recon-fleet-worker and recon-fleet-committer, found {sorted(deployments)}",
    )
    if not workers or not committer:
        return n
    cfg = job_config(K8S / "recon.toml")
    port = listen_port(cfg)
    sts = by_kind(base, "StatefulSet")[0]
    sts_pod = pod_spec(sts)
    sts_c = sts_pod["containers"][0]
    secret_keys = set(by_kind(base, "Secret")[0].get("stringData", {}))
    images = {i["name"] for i in kustomization.get("images", [])}
    base_maps = {g["name"] for g in kustomization.get("configMapGenerator", [])}
    labels_of = {}
    for name, d, role in (
        ("fleet-workers-deployment.yaml", workers, "worker"),
        ("fleet-committer-deployment.yaml", committer, "committer"),
    ):
        where = f"infra/k8s/fleet/{name}"
        spec = d.get("spec", {})
        labels = spec.get("template", {}).get("metadata", {}).get("labels", {})
        labels_of[role] = labels
        problems.expect(matches(spec.get("selector", {}), labels), where, "selector does not match the pod labels")
        problems.expect(
            labels.get("app.kubernetes.io/name") == "recon-pipeline",
            where,
            "pods must carry app.kubernetes.io/name: recon-pipeline (the metrics Service selects it)",
        )
        pod = pod_spec(d)
        grace = pod.get("terminationGracePeriodSeconds", 30)
        problems.expect(
            grace == sts_pod.get("terminationGracePeriodSeconds"),
            where,
            f"terminationGracePeriodSeconds {grace} != the StatefulSet's (one budget: systemd and compose use it)",
        )
        problems.expect(
            grace >= grace_budget_s(cfg),
            where,
            "terminationGracePeriodSeconds < checkpoint.interval_ms + commit.timeout_ms",
        )
        problems.expect(
            pod.get("securityContext") == sts_pod.get("securityContext"),
            where,
            "securityContext differs from the StatefulSet's",
        )
        for key in ("serviceAccountName", "automountServiceAccountToken", "enableServiceLinks"):
            problems.expect(pod.get(key) == sts_pod.get(key), where, f"{key} differs from the StatefulSet's")
        for v in pod.get("volumes", []):
            if "configMap" in v:
                problems.expect(
                    v["configMap"]["name"] in base_maps,
                    where,
                    f"ConfigMap {v['configMap']['name']!r} is not generated by ../kustomization.yaml",
                )
        containers = pod.get("containers", [])
        problems.expect(len(containers) == 1, where, "one container")
        for c in containers:
            args = c.get("args", [])
            problems.expect(
                args[:1] == ["run"] and f"--role={role}" in " ".join(args).replace("--role ", "--role="),
                where,
                f"args must be `run ... --role {role}`: {args}",
            )
            problems.expect(
                "--hold-on-stop" in args,
                where,
                "args need --hold-on-stop (as the StatefulSet: Kubernetes restarts whatever the exit code)",
            )
            problems.expect(
                c["image"] == sts_c["image"] and c["image"].rsplit(":", 1)[0] in images,
                where,
                f"image {c['image']} is not the StatefulSet's (under ../kustomization.yaml images)",
            )
            ports = {p.get("name"): p.get("containerPort") for p in c.get("ports", [])}
            problems.expect(
                ports.get("metrics") == port, where, f"container port `metrics` != recon.toml listen port {port}"
            )
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                problems.expect(c.get(probe) == sts_c.get(probe), where, f"{probe} differs from the StatefulSet's")
            problems.expect(
                "limits" in c.get("resources", {}) and "requests" in c.get("resources", {}),
                where,
                "resources need requests and limits",
            )
            problems.expect(
                c.get("securityContext") == sts_c.get("securityContext"),
                where,
                "container securityContext differs from the StatefulSet's",
            )
            problems.expect(
                c.get("volumeMounts") == sts_c.get("volumeMounts"), where, "volumeMounts differ from the StatefulSet's"
            )
            problems.expect(
                c.get("env") == sts_c.get("env"), where, "env differs from the StatefulSet's (the same secret recipe)"
            )
            check_env(c, secret_keys, where, problems)
            refs = [e["configMapRef"]["name"] for e in c.get("envFrom", []) if "configMapRef" in e]
            problems.expect(
                bool(refs) and all(r in generated for r in refs),
                where,
                f"envFrom must name the ConfigMap the component generates ({sorted(generated)}), got {refs}",
            )
    wspec, cspec = workers["spec"], committer["spec"]
    problems.expect(
        cspec.get("replicas") == 1,
        "infra/k8s/fleet/fleet-committer-deployment.yaml",
        "replicas must be 1: one committer per job",
    )
    problems.expect(
        cspec.get("strategy", {}).get("type") == "Recreate",
        "infra/k8s/fleet/fleet-committer-deployment.yaml",
        "strategy must be Recreate (never two committers during a rollout)",
    )
    problems.expect(
        wspec.get("replicas", 1) >= 1, "infra/k8s/fleet/fleet-workers-deployment.yaml", "replicas must be >= 1"
    )
    k = {}
    for gen in generated.values():
        for f in gen.get("envs", []):
            for line in (FLEET / f).read_text().splitlines():
                if line.strip() and not line.startswith("#"):
                    key, value = line.split("=", 1)
                    k[key.strip()] = value.strip()
    tasks = int(k.get("RECON__FLEET__TASKS", "0") or 0)
    problems.expect(tasks > 0, where, "fleet.env must set RECON__FLEET__TASKS > 0")
    problems.expect(
        wspec.get("replicas", 1) <= max(tasks, 1),
        "infra/k8s/fleet/fleet-workers-deployment.yaml",
        f"replicas {wspec.get('replicas')} > K = {tasks}: a worker beyond K gets no task and stays NotReady",
    )
    problems.expect(
        not matches(wspec["selector"], labels_of["committer"]) and not matches(cspec["selector"], labels_of["worker"]),
        "infra/k8s/fleet",
        "the workers' and the committer's selectors overlap",
    )
    for pdb in by_kind(resources, "PodDisruptionBudget"):
        sel = pdb.get("spec", {}).get("selector", {})
        hits = [r for r, labels in labels_of.items() if matches(sel, labels)]
        problems.expect(
            len(hits) == 1,
            "infra/k8s/fleet/fleet-pdb.yaml",
            f"{pdb['metadata']['name']}: selects {hits or 'nothing'}, expected one role",
        )
    metrics = [s for s in by_kind(base, "Service") if s["metadata"].get("annotations", {}).get("prometheus.io/port")]
    for role, labels in labels_of.items():
        problems.expect(
            any(s["spec"].get("selector", {}).items() <= labels.items() for s in metrics),
            "infra/k8s/fleet",
            f"no metrics Service of ../services.yaml selects the {role} pods",
        )
    return n


def kustomize(directory: Path) -> list[dict] | None:
    r = subprocess.run(
        ["kubectl", "kustomize", str(directory)], check=False, capture_output=True, text=True, timeout=120
    )
    if r.returncode != 0:
        raise RuntimeError(r.stderr.strip())
    return [d for d in yaml.safe_load_all(r.stdout) if d]


def check_fleet_render(problems: Problems) -> str:
    """`kubectl kustomize` (built-in kustomize, offline) renders the base, the base with the component's line
    uncommented, and an overlay of one's own; the fleet renders differ from the base exactly as promised."""
    where = "infra/k8s/fleet (kubectl kustomize)"
    if shutil.which("kubectl") is None:
        # The manifests themselves are validated above; only the rendering needs kubectl (a
        # fresh machine may lack it: `apt-get install kubectl`).
        print(f"{where}: kubectl not found; the fleet component was not rendered", file=sys.stderr)
        return "not rendered (no kubectl)"
    key = lambda d: (
        d["kind"],
        d["metadata"]["name"].rsplit("-", 1)[0] if d["kind"] == "ConfigMap" else d["metadata"]["name"],
    )
    with tempfile.TemporaryDirectory(prefix="recon-kustomize-") as tmp:
        tmp = Path(tmp)
        own = tmp / "own-overlay"
        own.mkdir()
        (own / "kustomization.yaml").write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "kustomize.config.k8s.io/v1beta1",
                    "kind": "Kustomization",
                    "resources": [os.path.relpath(K8S, own)],
                    "components": [os.path.relpath(FLEET, own)],
                }
            )
        )
        copy = tmp / "k8s"
        shutil.copytree(K8S, copy)
        text = (copy / "kustomization.yaml").read_text()
        uncommented = text.replace("# components:\n#   - fleet\n", "components:\n  - fleet\n")
        problems.expect(
            uncommented != text,
            "infra/k8s/kustomization.yaml",
            "the commented `# components:` / `#   - fleet` lines are gone",
        )
        (copy / "kustomization.yaml").write_text(uncommented)
        try:
            base = kustomize(K8S)
            renders = {"own overlay": kustomize(own), "components line uncommented": kustomize(copy)}
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            problems.add(where, f"kubectl kustomize failed: {e}")
            return "render failed"
    base_keys = {key(d) for d in base}
    gone = {("StatefulSet", "recon-pipeline"), ("Service", "recon-pipeline"), ("PodDisruptionBudget", "recon-pipeline")}
    added = {
        ("Deployment", "recon-fleet-worker"),
        ("Deployment", "recon-fleet-committer"),
        ("ConfigMap", "recon-fleet"),
        ("PodDisruptionBudget", "recon-fleet-worker"),
        ("PodDisruptionBudget", "recon-fleet-committer"),
    }
    problems.expect(
        gone <= base_keys and not (added & base_keys), where, "the base must render the single job and no fleet"
    )
    for how, docs in renders.items():
        keys = {key(d) for d in docs}
        problems.expect(
            keys == (base_keys - gone) | added,
            where,
            f"{how}: expected the base less {sorted(gone)} plus {sorted(added)}; extra {sorted(keys - ((base_keys - gone) | added))}, "
            f"missing {sorted(((base_keys - gone) | added) - keys)}",
        )
        maps = {d["metadata"]["name"] for d in docs if d["kind"] == "ConfigMap"}
        for d in docs:
            problems.expect(
                d["metadata"].get("namespace", "recon") == "recon"
                and d["metadata"].get("labels", {}).get("app.kubernetes.io/part-of") == "recon",
                where,
                f"{how}: {d['kind']}/{d['metadata']['name']} lacks namespace recon or the part-of label",
            )
            if d["kind"] == "Deployment":
                pod = d["spec"]["template"]["spec"]
                refs = [e["configMapRef"]["name"] for c in pod["containers"] for e in c.get("envFrom", [])]
                refs += [v["configMap"]["name"] for v in pod.get("volumes", []) if "configMap" in v]
                problems.expect(
                    all(r in maps for r in refs),
                    where,
                    f"{how}: {d['metadata']['name']} names ConfigMaps {refs} not among {sorted(maps)}",
                )
    return f"rendered {len(renders)} ways"


# --- compose --------------------------------------------------------------------------------------------------------
def compose_schema() -> dict:
    import check_jsonschema

    path = Path(check_jsonschema.__file__).parent / "builtin_schemas" / "vendor" / "compose-spec.json"
    return json.loads(path.read_text())


def check_compose(problems: Problems, grace_s: int) -> None:
    path = INFRA / "compose" / "docker-compose.yml"
    where = rel(path)
    doc = yaml.safe_load(path.read_text())
    validator = jsonschema.Draft202012Validator(compose_schema())
    for e in sorted(validator.iter_errors(doc), key=lambda e: list(e.path)):
        problems.add(where, f"compose-spec: {'.'.join(str(p) for p in e.path) or '(top)'}: {e.message}")
    services = doc.get("services", {})
    for name, s in services.items():
        for v in s.get("volumes", []):
            src = v.split(":")[0] if isinstance(v, str) else v.get("source", "")
            if src.startswith((".", "/")):
                problems.expect(
                    (path.parent / src).exists(), where, f"service {name}: mounted path {src} does not exist"
                )
            else:
                problems.expect(src in doc.get("volumes", {}), where, f"service {name}: volume {src} is not declared")
        build = s.get("build")
        if isinstance(build, dict):
            ctx = path.parent / build.get("context", ".")
            problems.expect(ctx.is_dir(), where, f"service {name}: build context {ctx} does not exist")
            if "dockerfile" in build:
                problems.expect(
                    (ctx / build["dockerfile"]).exists(),
                    where,
                    f"service {name}: dockerfile {build['dockerfile']} does not exist",
                )
        deps = s.get("depends_on", {})
        for dep in deps if isinstance(deps, (list, dict)) else []:
            problems.expect(dep in services, where, f"service {name}: depends_on {dep} is not a service")
    job = services.get("recon-pipeline", {})
    problems.expect(
        job.get("stop_grace_period") == f"{grace_s}s",
        where,
        f"recon-pipeline stop_grace_period must equal terminationGracePeriodSeconds ({grace_s}s)",
    )
    for name in ("recon-fleet-worker", "recon-fleet-committer"):
        s = services.get(name, {})
        problems.expect(
            s.get("profiles") == ["fleet"], where, f"{name}: must be in profile fleet only (not started by default)"
        )
        problems.expect(
            s.get("stop_grace_period") == f"{grace_s}s", where, f"{name}: stop_grace_period must be {grace_s}s"
        )
        role = name.rsplit("-", 1)[1]
        problems.expect(
            "--role" in s.get("command", [])
            and role in s.get("command", [])
            and "--hold-on-stop" in s.get("command", []),
            where,
            f"{name}: command must run --role {role} --hold-on-stop",
        )
        problems.expect(
            s.get("healthcheck") == job.get("healthcheck"), where, f"{name}: healthcheck differs from recon-pipeline's"
        )
        problems.expect(
            int(str(s.get("environment", {}).get("RECON__FLEET__TASKS", 0))) > 0,
            where,
            f"{name}: RECON__FLEET__TASKS must be > 0",
        )
    committer = services.get("recon-fleet-committer", {})
    problems.expect(
        committer.get("deploy", {}).get("replicas", 1) == 1, where, "recon-fleet-committer: exactly one replica"
    )
    cfg = job_config(path.parent / "recon.toml")
    problems.expect(
        grace_budget_s(cfg) <= grace_s, where, "compose recon.toml's interval + commit timeout exceed the grace period"
    )


def mounts(service: dict) -> dict[str, str]:
    """Container path -> host path (relative to infra/compose) of a compose service's bind mounts."""
    out = {}
    for v in service.get("volumes", []):
        if isinstance(v, str) and v.startswith((".", "/")):
            parts = v.split(":")
            out[parts[1]] = parts[0]
    return out


def check_compose_monitoring(problems: Problems) -> None:
    """Prometheus scrapes the job and loads the rules where compose mounts them; Grafana's provisioning points
    at the mounted dashboards and at the Prometheus service."""
    compose_dir = INFRA / "compose"
    where = "infra/compose"
    services = yaml.safe_load((compose_dir / "docker-compose.yml").read_text())["services"]
    prom = yaml.safe_load((compose_dir / "prometheus.yml").read_text())
    prom_mounts = mounts(services["prometheus"])
    for pattern in prom.get("rule_files", []):
        matched = [c for c in prom_mounts if Path(c).match(pattern)]
        problems.expect(bool(matched), where, f"prometheus.yml rule_files {pattern} matches no file compose mounts")
        for c in matched:
            host = (compose_dir / prom_mounts[c]).resolve()
            problems.expect(host == INFRA / "prometheus" / "recon-alerts.yml", where, f"{c} is not recon-alerts.yml")
    port = listen_port(job_config(compose_dir / "recon.toml"))
    targets = {t for sc in prom["scrape_configs"] for st in sc.get("static_configs", []) for t in st["targets"]}
    problems.expect(f"recon-pipeline:{port}" in targets, where, f"prometheus.yml does not scrape recon-pipeline:{port}")
    graf = mounts(services["grafana"])
    prov_host = graf.get("/etc/grafana/provisioning")
    problems.expect(prov_host is not None, where, "grafana: /etc/grafana/provisioning is not mounted")
    if prov_host:
        prov = (compose_dir / prov_host).resolve()
        for f in sorted((prov / "dashboards").glob("*.yml")):
            for provider in yaml.safe_load(f.read_text()).get("providers", []):
                path = provider.get("options", {}).get("path", "")
                host = graf.get(path)
                problems.expect(
                    host is not None and any((compose_dir / host).glob("*.json")),
                    where,
                    f"grafana provider {provider.get('name')}: {path} is not a mounted directory of dashboards",
                )
        for f in sorted((prov / "datasources").glob("*.yml")):
            for ds in yaml.safe_load(f.read_text()).get("datasources", []):
                host = re.match(r"https?://([^:/]+)", ds.get("url", ""))
                problems.expect(
                    bool(host) and host.group(1) in services,
                    where,
                    f"grafana data source {ds.get('name')}: {ds.get('url')} is no compose service",
                )


# --- Dockerfile ---------------------------------------------------------------------------------------------------
def check_dockerfile(problems: Problems, run_as_user: int, port: int) -> None:
    path = INFRA / "docker" / "Dockerfile"
    where = rel(path)
    try:
        cmds = dockerfile.parse_file(str(path))
    except dockerfile.GoParseError as e:
        problems.add(where, f"does not parse: {e}")
        return
    stages: list[str] = []
    args = {}
    for c in cmds:
        if c.cmd == "ARG" and "=" in c.value[0]:
            k, v = c.value[0].split("=", 1)
            args[k] = v
        if c.cmd == "FROM":
            stages.append(c.value[2] if len(c.value) == 3 and c.value[1].upper() == "AS" else "")
        if c.cmd == "COPY":
            src_stage = next((f.split("=", 1)[1] for f in c.flags if f.startswith("--from=")), None)
            if src_stage is not None:
                problems.expect(
                    src_stage in stages[:-1], where, f"COPY --from={src_stage}: no earlier stage of that name"
                )
            else:
                for src in c.value[:-1]:
                    problems.expect(
                        (REPO / src).exists(), where, f"COPY {src}: not in the build context (the repository root)"
                    )
    toolchain = tomllib.loads((REPO / "rust-toolchain.toml").read_text())["toolchain"]["channel"]
    problems.expect(
        args.get("RUST_VERSION") == toolchain,
        where,
        f"RUST_VERSION {args.get('RUST_VERSION')} != rust-toolchain.toml {toolchain}",
    )
    users = [c.value[0] for c in cmds if c.cmd == "USER"]
    problems.expect(
        bool(users) and users[-1].split(":")[0] == str(run_as_user),
        where,
        f"the final USER must be {run_as_user} (statefulset.yaml runAsUser)",
    )
    exposed = [v for c in cmds if c.cmd == "EXPOSE" for v in c.value]
    problems.expect(str(port) in exposed, where, f"EXPOSE {port} missing")
    build = " ".join(" ".join(c.value) for c in cmds if c.cmd == "RUN")
    for binary in ("recon-pipeline", "batch-verify"):
        problems.expect(
            f"-p {binary}" in build and f"target/release/{binary}" in build,
            where,
            f"{binary} is not built and installed",
        )
    problems.expect("--locked" in build, where, "cargo build must use --locked")


# --- systemd --------------------------------------------------------------------------------------------------------
def check_systemd(problems: Problems, grace_s: int) -> None:
    units = sorted((INFRA / "systemd").glob("*.service")) + sorted((INFRA / "systemd").glob("*.timer"))
    unit = (INFRA / "systemd" / "recon-pipeline.service").read_text()
    m = re.search(r"^TimeoutStopSec=(\d+)s?$", unit, re.MULTILINE)
    problems.expect(
        bool(m) and int(m.group(1)) == grace_s,
        "infra/systemd/recon-pipeline.service",
        f"TimeoutStopSec must equal terminationGracePeriodSeconds ({grace_s}s)",
    )
    for key in ("Restart=on-failure", "KillSignal=SIGTERM", "EnvironmentFile=", "NoNewPrivileges=yes"):
        problems.expect(key in unit, "infra/systemd/recon-pipeline.service", f"{key} missing")
    hardening = unit[unit.index("NoNewPrivileges=") : unit.index("ReadWritePaths=")]
    for name, role in (("recon-worker@.service", "worker"), ("recon-committer.service", "committer")):
        text = (INFRA / "systemd" / name).read_text()
        m = re.search(r"^TimeoutStopSec=(\d+)s?$", text, re.MULTILINE)
        problems.expect(
            bool(m) and int(m.group(1)) == grace_s, f"infra/systemd/{name}", f"TimeoutStopSec must be {grace_s}s"
        )
        for key in (
            "Restart=on-failure",
            "RestartPreventExitStatus=2 3 4",
            "KillSignal=SIGTERM",
            "Conflicts=recon-pipeline.service",
            "EnvironmentFile=/etc/recon/recon-pipeline.env",
            "EnvironmentFile=/etc/recon/recon-fleet.env",
            f"--role {role}",
        ):
            problems.expect(key in text, f"infra/systemd/{name}", f"{key} missing")
        problems.expect(
            hardening in text, f"infra/systemd/{name}", "the hardening block differs from recon-pipeline.service's"
        )
    tool = shutil.which("systemd-analyze")
    if tool is None:
        problems.add(
            "infra/systemd", "systemd-analyze not found (Debian: apt-get install systemd); the units were not verified"
        )
        return
    with tempfile.TemporaryDirectory() as tmp:
        bindir = Path(tmp) / "bin"
        bindir.mkdir()
        for b in ("recon-pipeline", "batch-verify"):  # stand-ins: verify checks that ExecStart= is executable
            (bindir / b).write_text("#!/bin/sh\n")
            (bindir / b).chmod(0o755)
        copies = []
        for u in units:
            c = Path(tmp) / u.name
            c.write_text(u.read_text().replace("/usr/local/bin/", f"{bindir}/"))
            copies.append(str(c))
        r = subprocess.run(
            [tool, "verify", "--man=no", *copies],
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
            env=dict(os.environ, SYSTEMD_LOG_COLOR="0"),
        )
        out = (r.stdout + r.stderr).replace(tmp + "/", "")
        problems.expect(
            r.returncode == 0 and not out.strip(),
            "infra/systemd",
            f"systemd-analyze verify (exit {r.returncode}):\n{out}",
        )


def main() -> int:
    problems = Problems()
    resources = k8s_resources()
    n = check_k8s_schemas(resources, problems)
    kustomization = check_kustomization(problems)
    check_k8s_consistency(resources, kustomization, problems)
    sts = by_kind(resources, "StatefulSet")[0]
    grace_s = pod_spec(sts).get("terminationGracePeriodSeconds", 30)
    run_as = pod_spec(sts).get("securityContext", {}).get("runAsUser", -1)
    check_compose(problems, grace_s)
    check_compose_monitoring(problems)
    check_dockerfile(problems, run_as, listen_port(job_config(K8S / "recon.toml")))
    check_systemd(problems, grace_s)
    n += check_fleet(resources, kustomization, problems)
    rendered = check_fleet_render(problems)
    for p in problems.items:
        print(f"FAIL {p}")
    print(
        f"manifests: {n} Kubernetes resources (the fleet's included) x {len(K8S_VERSIONS)} versions, the fleet component "
        f"{rendered}, compose, Dockerfile, systemd units: "
        f"{len(problems.items)} problem(s)"
    )
    return 1 if problems.items else 0


if __name__ == "__main__":
    sys.exit(main())
