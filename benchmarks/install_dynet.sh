#!/usr/bin/env bash
# Build and install DyNet 2.1.2 (the optional TreeLSTM peer) into the project venv.
# `pip install dynet` fails here twice: its build downloads Eigen (unreachable), and
# Cython 3 cannot compile its .pyx. So: Debian's Eigen headers via EIGEN3_INCLUDE_DIR,
# cython<3, and --no-build-isolation so pip uses that Cython. Takes ~20 min on 2 cores.
# CI does not run this; the harness skips DyNet when it is not importable.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
if ! [ -f /usr/include/eigen3/Eigen/Core ]; then
  apt-get update && apt-get install -y libeigen3-dev cmake g++
fi
command -v cmake >/dev/null || apt-get install -y cmake
"$PY" -m pip install "cython<3" setuptools wheel "numpy"
export EIGEN3_INCLUDE_DIR=/usr/include/eigen3
export MAKEFLAGS="-j${JOBS:-2}"
"$PY" -m pip install --no-build-isolation --no-binary dynet "dynet==2.1.2"
"$PY" -c "import dynet_config; dynet_config.set(autobatch=1); import dynet; print('dynet ok')"
