#!/usr/bin/env bash
# The Python package's tests: a virtual environment under target/py-venv (numpy, pytest, scipy for
# the AU-PRO reference, pillow to decode test images to arrays, maturin), the extension module
# built into crates/iuf-py/python/iuf, the `iuf` program the answers are compared with, then pytest.
# Needs ../shared beside the checkout (or IUF_SHARED).
#
# The module is built by `cargo build --workspace --lib --tests`: the same feature resolution as
# `cargo test --workspace`, so after the tests only pyo3 and iuf-py compile (~30 s; .cargo/
# config.toml sets PYO3_BUILD_EXTENSION_MODULE for every cargo command, as maturin does). It is
# copied beside the Python sources and the venv finds them through a .pth file: the layout
# `maturin develop` makes. `maturin develop` itself builds iuf-py as a package of its own, which
# resolves features differently and compiles the dependency graph a second time (12 min in CI);
# IUF_PY_BUILD=maturin uses it all the same. Either way `maturin sdist` checks that the package
# (pyproject.toml, Cargo.toml) still packs. From a warm target/ with IUF_BIN given: 27 tests in
# about 130 s on 2 cores (most of it learning the test models with the `iuf` program and with
# iuf.train/iuf.learn, and running `iuf predict`).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
venv="$root/target/py-venv"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
  echo "== creating $venv"
  "$python" -m venv "$venv"
fi
echo "== pip install maturin numpy pytest scipy pillow"
"$venv/bin/python" -m pip install -q --disable-pip-version-check maturin numpy pytest scipy pillow

# The iuf program the tests compare with. CI passes IUF_BIN=target/debug/iuf, which its
# `cargo test --workspace` has just built: `cargo build -p iuf-cli` resolves features for iuf-cli
# alone, which compiles the iuf crates once more.
if [ -z "${IUF_BIN:-}" ]; then
  echo "== cargo build -p iuf-cli (the iuf program the tests compare with)"
  cargo build -q -p iuf-cli
  IUF_BIN="$root/target/debug/iuf"
fi

echo "== maturin sdist (the package still packs)"
"$venv/bin/maturin" sdist --manifest-path crates/iuf-py/Cargo.toml --out target/py-sdist >/dev/null

if [ "${IUF_PY_BUILD:-workspace}" = maturin ]; then
  echo "== maturin develop (crates/iuf-py)"
  VIRTUAL_ENV="$venv" PATH="$venv/bin:$PATH" \
    maturin develop -q --manifest-path crates/iuf-py/Cargo.toml
else
  echo "== cargo build --workspace --lib --tests (the extension module, from the test build's units)"
  cargo build -q --workspace --lib --tests
  # Replace, not overwrite in place: a Python process may have the old module mapped.
  cp target/debug/lib_iuf.so crates/iuf-py/python/iuf/_iuf.abi3.so.tmp
  mv -f crates/iuf-py/python/iuf/_iuf.abi3.so.tmp crates/iuf-py/python/iuf/_iuf.abi3.so
  site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  # A package maturin installed earlier would shadow the sources.
  "$venv/bin/python" -m pip uninstall -q -y --disable-pip-version-check iuf >/dev/null 2>&1 || true
  echo "$root/crates/iuf-py/python" >"$site/iuf-dev.pth"
fi

echo "== pytest crates/iuf-py/tests"
IUF_BIN="$IUF_BIN" \
IUF_SHARED="${IUF_SHARED:-$root/../shared}" \
  "$venv/bin/python" -m pytest -q -s -p no:cacheprovider crates/iuf-py/tests "$@"
