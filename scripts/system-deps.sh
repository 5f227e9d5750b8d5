#!/usr/bin/env bash
# Debian packages some features and their tests need; installed when missing (as root, or with sudo):
#   chromium + chromium-driver  the web page's browser tests (selenium drives Debian's headless Chromium)
#   tesseract-ocr               `knnrag index --ocr` for scanned PDF pages
#   poppler-utils               pdftotext: the reference of the PDF text-recall benchmark
# Without apt (another OS) it says what to install and goes on: the tests that need them fail with
# the same message, they never pass silently.
set -euo pipefail
PKGS=(chromium chromium-driver tesseract-ocr poppler-utils)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null; then
  echo "knnrag: install these system packages for the browser tests, --ocr and the PDF benchmark: ${missing[*]}" >&2
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "knnrag: installing ${missing[*]} (apt-get)" >&2
$SUDO apt-get update -qq >&2
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
