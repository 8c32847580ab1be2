#!/usr/bin/env bash
# The whole test suite: builds and installs ferrite into a virtual environment, runs the Rust
# unit tests, fetches the real test model (cached), then runs pytest. README and CI both run this.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${FERRITE_VENV:-.venv-test}
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
"$PY" -m pip install --quiet --upgrade pip
"$PY" -m pip install --quiet ".[test]"

cargo test --lib --quiet

# Fetch once up front so a network failure reads as one clear message, not many test errors.
"$PY" -m ferrite fetch

set +e
"$PY" -m pytest -q -ra "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
    echo "pytest collected no tests: that is a failure here" >&2
    exit 1
fi
exit "$status"
