#!/usr/bin/env bash
# The Python package's tests: a virtual environment under target/py-venv (maturin, numpy, pytest,
# scipy for the AU-PRO reference, pillow to decode test images to arrays), the extension built
# into it with `maturin develop` (the dev profile: it shares target/debug with `cargo build`,
# whose dependencies are already optimised; a release build would compile candle again), the
# `iuf` program the answers are compared with, then pytest. Needs ../shared beside the checkout
# (or IUF_SHARED). From a warm target/ with IUF_BIN given: 27 tests in about 130 s on 2 cores
# shared with other builds (most of it learning the test models with the `iuf` program and with
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

echo "== maturin develop (crates/iuf-py)"
VIRTUAL_ENV="$venv" PATH="$venv/bin:$PATH" \
  maturin develop -q --manifest-path crates/iuf-py/Cargo.toml

echo "== pytest crates/iuf-py/tests"
IUF_BIN="$IUF_BIN" \
IUF_SHARED="${IUF_SHARED:-$root/../shared}" \
  "$venv/bin/python" -m pytest -q -s -p no:cacheprovider crates/iuf-py/tests "$@"
