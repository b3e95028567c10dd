#!/usr/bin/env bash
# End to end on a real cluster: build the image, start a kind cluster, load the image,
# install deploy/ (`kubectl apply -k`), wait for the rollout, smoke-test the deployed
# operator (a Job dispatched and rescheduled through it, under its real RBAC), then run
# the integration tests against that cluster (JOB_OPERATOR_TEST_KUBECONFIG=1).
#
# Needs Docker (a running engine) and kind; kubectl is taken from PATH. CI does not run
# it. Environment:
#   KIND_CLUSTER     cluster name (default job-operator-e2e)
#   KEEP_CLUSTER=1   leave the cluster running afterwards (default: delete it)
#   PYTEST_ARGS      extra pytest arguments (default: -q)
#   PYTHON           the Python with the project installed (default .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."

CLUSTER=${KIND_CLUSTER:-job-operator-e2e}
IMAGE=job-operator:0.1.0
INSTALL_NAMESPACE=job-operator-system
SMOKE_NAMESPACE=e2e-smoke
PYTHON=${PYTHON:-.venv/bin/python}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/job-operator-kind-e2e.XXXXXX")
KUBECONFIG_FILE="$WORK/kubeconfig"

say() { printf 'kind-e2e: %s\n' "$*" >&2; }

# --- what is needed ---------------------------------------------------------------------
missing=()
if ! command -v docker >/dev/null 2>&1; then
    missing+=("docker (not installed)")
elif ! docker info >/dev/null 2>&1; then
    missing+=("a Docker engine (docker info failed: no daemon reachable)")
fi
command -v kind >/dev/null 2>&1 || missing+=("kind (not installed: https://kind.sigs.k8s.io)")
command -v kubectl >/dev/null 2>&1 || missing+=("kubectl (not on PATH)")
[[ -x $PYTHON ]] || missing+=("$PYTHON (run make venv)")
if ((${#missing[@]})); then
    say "cannot run; missing:"
    for m in "${missing[@]}"; do say "  - $m"; done
    rm -rf "$WORK"
    exit 1
fi

export KUBECONFIG=$KUBECONFIG_FILE
simulator_pid=
created_cluster=
cleanup() {
    local rc=$?
    if [[ -n $simulator_pid ]]; then kill "$simulator_pid" 2>/dev/null || true; fi
    if [[ $rc -ne 0 ]] && kubectl get namespace "$INSTALL_NAMESPACE" >/dev/null 2>&1; then
        say "failed; the operator's pods and logs:"
        kubectl -n "$INSTALL_NAMESPACE" get pods -o wide >&2 || true
        kubectl -n "$INSTALL_NAMESPACE" logs -l app.kubernetes.io/name=job-operator \
            --all-containers --prefix --tail=100 >&2 || true
    fi
    if [[ -n $created_cluster && ${KEEP_CLUSTER:-0} != 1 ]]; then
        say "deleting kind cluster $CLUSTER"
        kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
    elif [[ -n $created_cluster ]]; then
        kind get kubeconfig --name "$CLUSTER" >"$WORK/kubeconfig.kept" 2>/dev/null || true
        say "kept cluster $CLUSTER: export KUBECONFIG=$WORK/kubeconfig.kept"
    fi
    [[ ${KEEP_CLUSTER:-0} == 1 ]] || rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT

# --- image and cluster --------------------------------------------------------------------
say "building $IMAGE"
docker build -t "$IMAGE" .

if kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
    say "reusing kind cluster $CLUSTER"
    kind export kubeconfig --name "$CLUSTER" --kubeconfig "$KUBECONFIG_FILE"
else
    say "creating kind cluster $CLUSTER"
    kind create cluster --name "$CLUSTER" --kubeconfig "$KUBECONFIG_FILE" --wait 180s
    created_cluster=1
fi
kind load docker-image "$IMAGE" --name "$CLUSTER"

# --- install -----------------------------------------------------------------------------
say "installing deploy/"
# Server-side: the CRDs are too large for client-side apply's last-applied annotation.
kubectl apply --server-side --field-manager=kind-e2e -k deploy/
kubectl wait --for=condition=Established --timeout=60s \
    crd/jobs.job-operator.dev crd/executorclusters.job-operator.dev
kubectl -n "$INSTALL_NAMESPACE" rollout status deployment/job-operator --timeout=180s
holder=
for _ in $(seq 60); do
    holder=$(kubectl -n "$INSTALL_NAMESPACE" get lease job-operator-leader \
        -o jsonpath='{.spec.holderIdentity}' 2>/dev/null || true)
    [[ -n $holder ]] && break
    sleep 1
done
[[ -n $holder ]] || { say "no replica took the Lease"; exit 1; }
say "leader: $holder"

# --- smoke test of the deployed operator (its real ServiceAccount and RBAC) ----------------
say "smoke test in namespace $SMOKE_NAMESPACE"
kubectl create namespace "$SMOKE_NAMESPACE" --dry-run=client -o yaml | kubectl apply -f -
"$PYTHON" -m job_operator simulate -n "$SMOKE_NAMESPACE" --provision-seconds 0.5 \
    --run-seconds 1 --seed 7 >"$WORK/simulator.log" 2>&1 &
simulator_pid=$!
kubectl apply -f - <<EOF
apiVersion: job-operator.dev/v1
kind: Job
metadata:
  name: smoke
  namespace: $SMOKE_NAMESPACE
  annotations:
    simulate.job-operator.dev/outcome: hang
spec:
  type: materialize-view
  input: {dataset_id: 1}
EOF
kubectl -n "$SMOKE_NAMESPACE" wait ojob/smoke --for=jsonpath='{.status.state}'=running \
    --timeout=120s
"$PYTHON" -m job_operator reschedule smoke -n "$SMOKE_NAMESPACE" --timeout 60 -o json
kubectl -n "$SMOKE_NAMESPACE" wait ojob/smoke --for=jsonpath='{.status.attempt}'=2 \
    --timeout=60s
kubectl -n "$SMOKE_NAMESPACE" wait ojob/smoke --for=jsonpath='{.status.state}'=running \
    --timeout=60s
# Every replica's log (with -l, kubectl logs shows 10 lines unless told otherwise).
if kubectl -n "$INSTALL_NAMESPACE" logs -l app.kubernetes.io/name=job-operator \
    --all-containers --prefix --tail=-1 | grep -E 'Forbidden'; then
    say "the operator was refused requests: its RBAC is short of what it uses"
    exit 1
fi
kill "$simulator_pid" 2>/dev/null || true
wait "$simulator_pid" 2>/dev/null || true
simulator_pid=
kubectl delete namespace "$SMOKE_NAMESPACE" --wait=false

# --- fail-over: the leader's pod deleted (SIGTERM), the standby takes the Lease at once ----
leader_pod=${holder%-*} # the identity is <hostname>-<pid>; the hostname is the pod's name
say "deleting the leader's pod $leader_pod"
kubectl -n "$INSTALL_NAMESPACE" delete pod "$leader_pod" --wait=false
new_holder=
# A released Lease is taken within a retry period (3 s) of the release, which comes
# some 6 s after SIGTERM; an expired one (no release) only 15 s after the last renewal,
# and the leader renews while it shuts down: a hand-over within 14 s was a release.
for _ in $(seq 14); do
    new_holder=$(kubectl -n "$INSTALL_NAMESPACE" get lease job-operator-leader \
        -o jsonpath='{.spec.holderIdentity}')
    [[ -n $new_holder && $new_holder != "$holder" ]] && break
    sleep 1
done
[[ -n $new_holder && $new_holder != "$holder" ]] || {
    say "the standby did not take over within 14 s (holder: '$new_holder')"
    exit 1
}
say "new leader: $new_holder"
kubectl -n "$INSTALL_NAMESPACE" rollout status deployment/job-operator --timeout=180s

# --- the integration tests ----------------------------------------------------------------
# They start operators of their own, one per test namespace: the deployed one would act on
# the same Jobs, so it is scaled to zero first.
say "scaling the deployed operator to zero for the integration tests"
kubectl -n "$INSTALL_NAMESPACE" scale deployment/job-operator --replicas=0
for _ in $(seq 90); do
    [[ -z $(kubectl -n "$INSTALL_NAMESPACE" get pods -l app.kubernetes.io/name=job-operator \
        -o name) ]] && break
    sleep 1
done
say "running the integration tests against kind"
# shellcheck disable=SC2086  # PYTEST_ARGS is a list of words
JOB_OPERATOR_TEST_KUBECONFIG=1 KUBECONFIG=$KUBECONFIG_FILE \
    "$PYTHON" -m pytest ${PYTEST_ARGS:--q} tests/integration
say "passed"
