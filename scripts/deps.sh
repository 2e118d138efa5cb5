#!/usr/bin/env bash
# Installs the Debian packages ctrain needs, only those that are missing. The make targets
# call it, so a fresh machine needs nothing but the README's commands.
set -euo pipefail

pkgs=(build-essential pkg-config libopenblas-dev libopenmpi-dev openmpi-bin libhwloc-dev check
      zlib1g-dev libinih-dev libjansson-dev dataset-fashion-mnist python3-torch gnuplot-nox
      python3-torchvision python3-pil libjpeg62-turbo-dev libspng-dev clang)

missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "deps.sh: installing ${missing[*]}" >&2
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
