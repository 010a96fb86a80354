#!/usr/bin/env bash
# Debian's chromium and chromium-driver, which the browser tests (tests/ui/) and `make bench-ui` drive
# through Playwright's Python API (never Playwright's own browser download). Skipped when present;
# fails with a clear message when they cannot be installed.
set -euo pipefail
CHROMIUM="${BERTH_CHROMIUM:-/usr/bin/chromium}"  # where the tests look for it (loadtests/browser.py)
if [ -x "$CHROMIUM" ] && [ -x /usr/bin/chromedriver ]; then
  exit 0
fi
fail() {
  echo "berth: the browser tests need Debian's chromium and chromium-driver ($CHROMIUM): $*" >&2
  echo "berth: install them with \`sudo apt-get install -y chromium chromium-driver\` and run make again" >&2
  exit 1
}
command -v apt-get >/dev/null || fail "apt-get is not available on this machine"
SUDO=()
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null || fail "not root and no sudo"
  SUDO=(sudo -n)
fi
echo "installing chromium and chromium-driver from Debian's packages (first time only)"
"${SUDO[@]}" apt-get update -q >/dev/null || fail "apt-get update failed"
DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -q --no-install-recommends chromium chromium-driver \
  >/dev/null || fail "apt-get install failed"
[ -x "$CHROMIUM" ] || fail "$CHROMIUM is still missing after apt-get install"
