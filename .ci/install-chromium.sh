#!/usr/bin/env bash
# Headless Chromium for tests/test_render_report.py, which loads the HTML report in it (the test skips
# that check, and says so, when /usr/bin/chromium is absent). Debian's `chromium` package; idempotent
# and quiet: does nothing when Chromium is already there. About 45 s on a fresh Debian 12 machine.
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-chromium: no apt-get here; install Chromium as /usr/bin/chromium by hand" >&2
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
# A failed install is not a failed CI: the one check that needs Chromium then skips, saying why.
if ! { $SUDO apt-get update -qq >/dev/null && $SUDO apt-get install -y -qq chromium >/dev/null; }; then
    echo "install-chromium: could not install chromium; the report's browser check will skip" >&2
fi
