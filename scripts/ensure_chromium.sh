#!/usr/bin/env bash
# Headless Chromium for tests/reports/test_report_browser.py, which opens the marketer's report
# in a real browser (images load, nothing overflows 1280 px, no console errors). Debian's
# `chromium` package installs /usr/bin/chromium; the test drives it over the DevTools protocol,
# so no driver and no browser download is needed. Safe to run again: does nothing once it is there.
set -euo pipefail

have_chromium() {
  command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1
}

if have_chromium; then
  exit 0
fi

if [[ "$(id -u)" -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
  echo "Chromium not found (and cannot apt-get install it here): the report's browser test" \
    "(tests/reports/test_report_browser.py) will be skipped"
  exit 0
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium

if ! have_chromium; then
  echo "apt-get installed chromium, but no chromium command is on PATH" >&2
  exit 1
fi
