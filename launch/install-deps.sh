#!/usr/bin/env bash
# Installs every Debian 12 package tpserve needs to build and test (idempotent: only missing
# packages are installed). The CUDA toolkit (nvcc, cuBLAS, NCCL) is optional and expected at
# /usr/local/cuda; without it the CPU build is complete.
set -euo pipefail

PACKAGES=(
  build-essential cmake ninja-build pkg-config git python3
  libopenmpi-dev openmpi-bin libucx-dev
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libyaml-cpp-dev nlohmann-json3-dev libcli11-dev libfmt-dev
  libpcre2-dev libutf8proc-dev sentencepiece
  libcpp-httplib-dev
  # Debian's oneDNN is built with its OpenCL runtime, so dnnl-config.cmake needs OpenCL (a
  # Recommends, which --no-install-recommends would skip).
  libdnnl-dev ocl-icd-opencl-dev libopenblas-dev
  libgtest-dev libgmock-dev
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#PACKAGES[@]} packages present"
  exit 0
fi
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
echo "install-deps: installing ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
