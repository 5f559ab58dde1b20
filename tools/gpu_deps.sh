#!/usr/bin/env bash
# Fetches, here (apt reachable), the Debian packages of the C++ libraries the
# build needs that the GPU machine's image lacks (it has nvcc, CMake, ninja
# and python3 with torch, but no fmt, yaml-cpp, GoogleTest, Eigen,
# nlohmann-json or Boost.Program_options, and reaches no package registry)
# into ./.gpu-deps (ignored by git, about 12 MB). tools/gpu_check.sh unpacks
# them into a prefix of its own (never into /) when the device run carries
# the folder:
#   here:    bash tools/gpu_deps.sh
#   device:  run(command="bash tools/gpu_check.sh", carry=[".gpu-deps"])
# Idempotent: packages already downloaded are kept.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEST="$ROOT/.gpu-deps"
PACKAGES=(nlohmann-json3-dev libeigen3-dev libfmt-dev libfmt9 libyaml-cpp-dev libyaml-cpp0.7 libgtest-dev
          libgmock-dev libboost-program-options-dev libboost-program-options1.74-dev
          libboost-program-options1.74.0 libboost1.74-dev)
mkdir -p "$DEST"
missing=()
for p in "${PACKAGES[@]}"; do
  ls "$DEST/${p}_"*.deb > /dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  command -v apt-get > /dev/null || { echo "gpu_deps: apt-get not found (a Debian/Ubuntu machine is needed)" >&2; exit 2; }
  # apt's sandbox user cannot write to an arbitrary folder: download in a
  # temporary one it owns, then move.
  tmp=$(mktemp -d)
  chmod 777 "$tmp"
  (cd "$tmp" && apt-get download "${missing[@]}")
  mv "$tmp"/*.deb "$DEST"/
  rmdir "$tmp"
fi
echo "gpu_deps: $(ls "$DEST"/*.deb | wc -l) packages in $DEST ($(du -sh "$DEST" | cut -f1))"
