# Shared by scripts/test.sh and scripts/demo.sh: make sure the tools they need exist.
# shellcheck shell=bash

# Installs redis-server (and redis-cli) through the system package manager when
# run as root; otherwise says exactly what to install and exits.
ensure_redis() {
  if command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1; then
    return 0
  fi
  if [ "$(id -u)" = "0" ]; then
    echo "==> installing redis-server with the system package manager" >&2
    if command -v apt-get >/dev/null 2>&1; then
      export DEBIAN_FRONTEND=noninteractive
      apt-get install -y -qq redis-server redis-tools >/dev/null 2>&1 \
        || { apt-get update -qq >/dev/null && apt-get install -y -qq redis-server redis-tools >/dev/null; }
    elif command -v dnf >/dev/null 2>&1; then
      dnf install -y -q redis
    elif command -v yum >/dev/null 2>&1; then
      yum install -y -q redis
    elif command -v apk >/dev/null 2>&1; then
      apk add --quiet redis
    elif command -v pacman >/dev/null 2>&1; then
      pacman -Sy --noconfirm --quiet redis
    fi
  fi
  if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
    cat >&2 <<'MSG'
lula needs redis-server and redis-cli (Redis 6.2 or newer) on PATH.
Install them with your package manager, for example:
  sudo apt-get install redis-server      # Debian, Ubuntu
  sudo dnf install redis                 # Fedora, RHEL
  brew install redis                     # macOS
or run this script as root and it installs them for you.
MSG
    exit 1
  fi
}

# Installs oathtool (an independent TOTP implementation the tests check lula's
# codes against) the same way, or says how.
ensure_oathtool() {
  command -v oathtool >/dev/null 2>&1 && return 0
  if [ "$(id -u)" = "0" ]; then
    echo "==> installing oathtool with the system package manager" >&2
    if command -v apt-get >/dev/null 2>&1; then
      export DEBIAN_FRONTEND=noninteractive
      apt-get install -y -qq oathtool >/dev/null 2>&1 \
        || { apt-get update -qq >/dev/null && apt-get install -y -qq oathtool >/dev/null; }
    elif command -v dnf >/dev/null 2>&1; then
      dnf install -y -q oathtool
    elif command -v apk >/dev/null 2>&1; then
      apk add --quiet oath-toolkit-oathtool
    fi
  fi
  if ! command -v oathtool >/dev/null 2>&1; then
    echo "the tests need oathtool: sudo apt-get install oathtool (or run this script as root)" >&2
    exit 1
  fi
}
