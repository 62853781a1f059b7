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

# Installs a tool the tests use through the system package manager when run as
# root, or says what to install. ensure_tool <command> <debian package> <why>
ensure_tool() {
  local cmd=$1 pkg=$2 why=$3
  command -v "$cmd" >/dev/null 2>&1 && return 0
  [ -x "/usr/sbin/$cmd" ] && return 0
  if [ "$(id -u)" = "0" ]; then
    echo "==> installing $pkg with the system package manager" >&2
    if command -v apt-get >/dev/null 2>&1; then
      export DEBIAN_FRONTEND=noninteractive
      apt-get install -y -qq "$pkg" >/dev/null 2>&1 \
        || { apt-get update -qq >/dev/null && apt-get install -y -qq "$pkg" >/dev/null; }
    elif command -v dnf >/dev/null 2>&1; then
      dnf install -y -q "$pkg"
    elif command -v apk >/dev/null 2>&1; then
      apk add --quiet "$pkg"
    fi
  fi
  if ! command -v "$cmd" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$cmd" ]; then
    echo "the tests need $cmd ($why): sudo apt-get install $pkg (or run this script as root)" >&2
    exit 1
  fi
}
