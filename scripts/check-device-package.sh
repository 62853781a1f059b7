#!/usr/bin/env bash
# Checks a lula-client .deb the way dpkg would install it, without installing
# it: its file list and modes, its control data, the binary's architecture and
# debug link, and `systemd-analyze verify` on its unit.
#
#   scripts/check-device-package.sh target/device/arm64/lula-client_0.1.0_arm64.deb
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_tool systemd-analyze systemd "verifies the packaged unit"
ensure_tool readelf binutils "reads the packaged binary's architecture"

deb=${1:?usage: $0 <lula-client .deb>}
fail() {
  echo "package check FAILED ($deb): $*" >&2
  exit 1
}

arch=$(dpkg-deb --field "$deb" Architecture)
case "$arch" in
  arm64) machine=AArch64 ;;
  armhf) machine=ARM ;;
  amd64) machine=X86-64 ;;
  *) fail "unexpected Architecture: $arch" ;;
esac
[ "$(dpkg-deb --field "$deb" Package)" = lula-client ] || fail "Package is not lula-client"

# The layout, with owners and modes, as dpkg --contents lists it.
contents=$(dpkg --contents "$deb")
expect() { # expect <mode> <path>
  grep -Eq "^$1 root/root .* \./${2#/}\$" <<<"$contents" || fail "no $2 with mode $1 owned by root in:
$contents"
}
expect -rwxr-xr-x /usr/bin/lula-client
expect -rw-r--r-- /usr/lib/systemd/system/lula-client.service
expect -rw-r--r-- /usr/lib/systemd/system/lula-client-check.service
expect -rw-r--r-- /usr/lib/systemd/system/lula-client-check.timer
expect -rw-r--r-- /etc/lula-client/lula-client.env
expect -rw-r--r-- /usr/share/doc/lula-client/DEVICE.md
grep -Eq "^drwxr-xr-x root/root .* \./\$" <<<"$contents" || fail "the package's root is not 0755 (it would change /)"
if grep -q "otp-secret" <<<"$contents"; then
  fail "the package ships an OTP secret file; the operator creates it"
fi

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
dpkg -x "$deb" "$root"
dpkg-deb --control "$deb" "$root/DEBIAN"
grep -qx /etc/lula-client/lula-client.env "$root/DEBIAN/conffiles" || fail "the env file is not a conffile"
for script in postinst prerm postrm; do
  [ -x "$root/DEBIAN/$script" ] || fail "no executable $script"
  sh -n "$root/DEBIAN/$script" || fail "$script does not parse"
done

# The binary: the package's architecture, stripped, linked to its debug file.
bin=$root/usr/bin/lula-client
header=$(readelf -h "$bin")
sections=$(readelf -S -W "$bin")
grep -q "Machine:.*$machine" <<<"$header" || fail "usr/bin/lula-client is not $machine"
if grep -Eq '\.debug_(info|line|abbrev|str) ' <<<"$sections"; then
  fail "usr/bin/lula-client is not stripped"
fi
grep -q '\.gnu_debuglink' <<<"$sections" || fail "usr/bin/lula-client has no .gnu_debuglink"

# The unit: what it must say, then systemd's own verdict.
unit=$root/usr/lib/systemd/system/lula-client.service
for line in Restart=always StateDirectory=lula-client \
  EnvironmentFile=/etc/lula-client/lula-client.env \
  Environment=LULA_OTP_SECRET_FILE=/etc/lula-client/otp-secret \
  After=redis-server.service ExecStart=/usr/bin/lula-client NoNewPrivileges=yes \
  ProtectSystem=strict; do
  grep -q "^$line" "$unit" || fail "the unit has no $line"
done
grep -q '^RestrictAddressFamilies=.*AF_INET6' "$unit" || fail "the unit cannot reach the network"
grep -q '^REDIS_URL=redis://127.0.0.1:6379$' "$root/etc/lula-client/lula-client.env" \
  || fail "the default config does not point at the local Redis"
# verify resolves ExecStart on this machine: point it at the unpacked binary.
sed "s|/usr/bin/lula-client|$bin|" "$unit" >"$root/lula-client.service"
systemd-analyze verify "$root/lula-client.service" || fail "systemd-analyze verify"
# The health check: the timer runs `lula-client status --check`.
check=$root/usr/lib/systemd/system/lula-client-check.service
grep -q '^ExecStart=/usr/bin/lula-client status --check$' "$check" \
  || fail "the health check does not run lula-client status --check"
sed "s|/usr/bin/lula-client|$bin|" "$check" >"$root/lula-client-check.service"
cp "$root/usr/lib/systemd/system/lula-client-check.timer" "$root/"
systemd-analyze verify "$root/lula-client-check.service" "$root/lula-client-check.timer" \
  || fail "systemd-analyze verify (health check)"
echo "==> $deb: layout, control, binary ($machine, stripped, debuglink) and unit OK"
