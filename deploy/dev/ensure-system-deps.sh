#!/usr/bin/env bash
# Debian packages the tests need: Chromium (browser tests, launched by Playwright from
# /usr/bin/chromium), Pango (WeasyPrint PDF reports) and poppler-utils (pdftotext, which
# the audit-report test uses to read the PDF back). Installs only what is missing.
set -euo pipefail
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
ldconfig -p | grep -q 'libpango-1.0.so' || need+=(libpango-1.0-0 libpangoft2-1.0-0)
ldconfig -p | grep -q 'libharfbuzz-subset' || need+=(libharfbuzz-subset0)
command -v pdftotext >/dev/null 2>&1 || need+=(poppler-utils)
fc-list 2>/dev/null | grep -qi dejavu || need+=(fonts-dejavu-core)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]}"
  if [ "$(id -u)" != 0 ]; then echo "run as root or install: ${need[*]}" >&2; exit 1; fi
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >/dev/null
fi
