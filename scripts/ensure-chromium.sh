#!/usr/bin/env bash
# Make sure a Chromium is there for the browser tests (tests/test_docs_offline.py loads
# the offline docs pages in a real headless browser and fails without one).  Used by
# `make test`, `make test-wire` and .ci/run, so `make test` works on a fresh machine too.
# POLYMICRO_TEST_CHROMIUM names a browser binary to use instead; otherwise Debian's
# `chromium` is installed with apt-get when missing (as root, or through sudo).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export DEBIAN_FRONTEND=noninteractive

if [ -n "${POLYMICRO_TEST_CHROMIUM:-}" ]; then
    echo "the browser tests use POLYMICRO_TEST_CHROMIUM=$POLYMICRO_TEST_CHROMIUM"
    exit 0
fi
if command -v chromium >/dev/null; then
    exit 0
fi
echo "chromium is missing (the browser tests need it); installing Debian's chromium"
sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo -n"
mkdir -p var
if ! { $sudo apt-get update -qq && $sudo apt-get install -y -qq --no-install-recommends chromium; } >var/apt-chromium.log 2>&1; then
    echo "apt-get could not install chromium (install it, or set POLYMICRO_TEST_CHROMIUM):" >&2
    tail -n 20 var/apt-chromium.log >&2
    exit 1
fi
chromium --version 2>/dev/null || true
