#!/usr/bin/env bash
# Build and install DyNet 2.1.2 (the optional DyNet peer) into the project venv.
# `pip install dynet` fails here twice: its build downloads Eigen (unreachable), and
# Cython 3 cannot compile its .pyx. So: Debian's Eigen 3.4 headers via EIGEN3_INCLUDE_DIR,
# cython<3, and --no-build-isolation so pip uses that Cython.
# Takes ~20 min on 2 cores (JOBS=2, under `nice`). The source is unpacked into a kept
# directory (DYNET_SRC, default <venv>/src) and pip builds it in place, so a rerun after
# a failure continues the make where it stopped instead of starting over.
# CI does not run this; the harness skips DyNet when it is not importable.
#
#   bash benchmarks/install_dynet.sh            # into .venv
#   PYTHON=/path/to/python JOBS=4 bash benchmarks/install_dynet.sh   # FORCE=1: rebuild
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
# absolute, but not through the symlink (a venv's python links to the base interpreter)
PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")"
VERSION=2.1.2
SRC_ROOT=${DYNET_SRC:-$(dirname "$(dirname "$PY")")/src}

if [ -z "${FORCE:-}" ] && (cd / && "$PY" -c "import importlib.metadata as m, _dynet; \
assert m.version('dyNET') == '$VERSION'") 2>/dev/null; then
  echo "DyNet $VERSION is already installed for $PY (FORCE=1 rebuilds)"; exit 0
fi

if ! [ -f /usr/include/eigen3/unsupported/Eigen/CXX11/Tensor ]; then
  apt-get update && apt-get install -y libeigen3-dev
fi
for tool in cmake make g++; do
  command -v "$tool" >/dev/null || { apt-get update && apt-get install -y cmake make g++; break; }
done

"$PY" -m pip install "cython<3" setuptools wheel numpy

mkdir -p "$SRC_ROOT"
cd "$SRC_ROOT"
if ! [ -f "dyNET-$VERSION/setup.py" ]; then
  # --no-binary dynet (not :all:, which would build setuptools/Cython from source too);
  # --no-build-isolation: pip prepares the sdist's metadata with the venv's cython<3
  "$PY" -m pip download --no-deps --no-binary dynet --no-build-isolation "dynet==$VERSION" -d .
  tar xzf "dyNET-$VERSION.tar.gz"
fi

# DyNet's build_py chdir()s into build/<py>/python and never returns, so setuptools'
# wheel step (license_files, default LICEN[CS]E*) looks for LICENSE.txt there and stops
# with "[Errno 2] No such file or directory: 'LICENSE.txt'". Copy it along after the chdir.
"$PY" - "dyNET-$VERSION/setup.py" <<'PATCH'
import sys
path = sys.argv[1]
src = open(path).read()
chdir = '        os.chdir(os.path.join(BUILD_DIR, "python"))\n'
fix = '        copyfile(os.path.join(SCRIPT_DIR, "LICENSE.txt"), "LICENSE.txt")  # install_dynet.sh\n'
if fix not in src:
    assert chdir in src, "DyNet's setup.py changed: build_py's chdir not found"
    src = src.replace(chdir, chdir + fix).replace("import os\n", "import os\nfrom shutil import copyfile\n", 1)
    open(path, "w").write(src)
PATCH

export EIGEN3_INCLUDE_DIR=/usr/include/eigen3
export MAKE_FLAGS="-j${JOBS:-2}"          # DyNet's setup.py reads MAKE_FLAGS (default: all cores)
# from a local directory pip builds in place (dyNET-*/build/py3.X-64bit), kept for reruns;
# --no-deps: its install_requires "cython" must not pull Cython 3 back in
nice -n "${NICE:-10}" "$PY" -m pip install -v --no-build-isolation --no-deps "./dyNET-$VERSION"

cd /
"$PY" -c "import dynet_config; dynet_config.set(autobatch=1); import dynet as dy; \
dy.renew_cg(); print('dynet ok', dy.inputTensor([1.0, 2.0]).npvalue())"
