#!/usr/bin/env bash
# The tools that render and validate deploy/helm/presence, built from the Go module proxy
# once per machine and cached (like the local stack) in $STACK_CACHE/bin:
#   helm-<version>                      helm itself (go install helm.sh/helm/v3/cmd/helm)
#   presence-k8s-validate-<hash>        deploy/validate: strict decoding into k8s.io/api types
# Prints the two paths, one per line. Usage:
#   bash deploy/tools.sh                 # build if missing, print the paths
#   bash deploy/tools.sh render [helm template args...]   # render the chart and validate it
set -euo pipefail

DEPLOY_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
HOME_DIR="${HOME:-$(cd ~ && pwd)}"
CACHE="${STACK_CACHE:-$HOME_DIR/.cache/presence}"
HELM_VERSION=v3.22.0
HELM="$CACHE/bin/helm-$HELM_VERSION"
LOG="$CACHE/deploy-tools.log"

die() { echo "deploy/tools.sh: $*" >&2; exit 1; }

hash_files() { cat "$@" | sha256sum | cut -c1-16; }

ensure_helm() {
  [[ -x "$HELM" ]] && return 0
  command -v go >/dev/null || die "go not found (needed once to build helm)"
  mkdir -p "$CACHE/bin"
  local tmp="$CACHE/helm-build.$$"
  echo "building helm $HELM_VERSION into $HELM (first time only, a few minutes; log: $LOG)..." >&2
  if ! GOBIN="$tmp" GOFLAGS=-mod=mod CGO_ENABLED=0 go install -trimpath "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" >>"$LOG" 2>&1; then
    rm -rf "$tmp"; tail -20 "$LOG" >&2; die "could not build helm (log: $LOG)"
  fi
  mv "$tmp/helm" "$HELM" && rm -rf "$tmp"
}

ensure_validator() {
  local src="$DEPLOY_DIR/validate" want tmp
  want="$(hash_files "$src/go.mod" "$src/go.sum" "$src"/*.go)"
  VALIDATE="$CACHE/bin/presence-k8s-validate-$want"
  [[ -x "$VALIDATE" ]] && return 0
  command -v go >/dev/null || die "go not found (needed once to build the validator)"
  mkdir -p "$CACHE/bin"
  tmp="$VALIDATE.tmp.$$"
  echo "building deploy/validate into $VALIDATE (first time only; log: $LOG)..." >&2
  if ! (cd "$src" && GOFLAGS=-mod=mod CGO_ENABLED=0 go build -trimpath -buildvcs=false -o "$tmp" .) >>"$LOG" 2>&1; then
    rm -f "$tmp"; tail -20 "$LOG" >&2; die "could not build deploy/validate (log: $LOG)"
  fi
  mv "$tmp" "$VALIDATE"
}

ensure_helm
ensure_validator
if [[ "${1:-}" == render ]]; then
  shift
  "$HELM" template presence "$DEPLOY_DIR/helm/presence" "$@" | "$VALIDATE"
else
  echo "$HELM"
  echo "$VALIDATE"
fi
