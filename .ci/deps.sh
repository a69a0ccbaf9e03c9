#!/bin/sh
# Installs the Debian packages named as arguments when any is missing.
# Runs `apt-get update` once per machine session before the first install.
set -e
missing=""
for p in "$@"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
echo "installing:$missing" >&2
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO=sudo; else
    echo "missing Debian packages:$missing (run as root, or install them)" >&2
    exit 1
  fi
fi
stamp=/tmp/.postback-apt-updated
[ -f "$stamp" ] || { ${SUDO:-} apt-get update -qq >&2 && touch "$stamp"; }
DEBIAN_FRONTEND=noninteractive ${SUDO:-} apt-get install -y -qq --no-install-recommends $missing >&2
