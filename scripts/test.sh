#!/usr/bin/env bash
# The whole test suite: builds and installs ferrite into a virtual environment, runs the Rust
# unit tests, fetches the real test model (cached), then runs pytest. README and CI both run this.
# Each stage says what it is doing and how long it took; the long ones (the first build, the
# first download) print their own progress.
set -euo pipefail
cd "$(dirname "$0")/.."

started=$SECONDS
stage() { printf '\n==> [%4ds] %s\n' "$((SECONDS - started))" "$*"; }

VENV=${FERRITE_VENV:-.venv-test}
if [ ! -x "$VENV/bin/python" ]; then
    stage "creating the virtual environment $VENV"
    python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"

stage "upgrading pip in $VENV"
"$PY" -m pip install --quiet --upgrade pip
# The distribution was called `ferrite` before it became `ferrite-llm`: an old install would
# keep its own record of the same files.
if "$PY" -m pip show --quiet ferrite >/dev/null 2>&1; then
    stage "removing the old distribution 'ferrite' (now 'ferrite-llm')"
    "$PY" -m pip uninstall --quiet --yes ferrite
fi
stage "installing ferrite-llm[test]: the test dependencies, then the release build of the Rust extension (the first build takes ~5 minutes on 2 cores)"
# pip -v streams the build; the dependency and cargo per-crate lines are the progress, the whole
# output goes to a log that is shown when the install fails.
log="$VENV/pip-install.log"
set +e
"$PY" -m pip install -v ".[test]" 2>&1 | tee "$log" \
    | grep --line-buffered -E '^\s*(Collecting|Compiling|Finished|Successfully installed)' | sed -u 's/^ */    /'
status=${PIPESTATUS[0]}
set -e
if [ "$status" -ne 0 ]; then
    tail -n 60 "$log" >&2
    echo "pip install failed (exit status $status); the whole output is in $log" >&2
    exit "$status"
fi

stage "Rust unit tests: building them (debug profile; ~3 minutes the first time)"
cargo test --lib --no-run 2>&1 | sed -u 's/^ */    /'
stage "Rust unit tests: running them"
cargo test --lib --quiet

# Fetch once up front so a network failure reads as one clear message, not many test errors.
stage "the test model (downloaded once into ~/.cache/ferrite, then only checked)"
"$PY" -m ferrite fetch

stage "pytest $*"
set +e
"$PY" -m pytest -q -ra "$@"
status=$?
set -e
stage "done: pytest exit status $status"
if [ "$status" -eq 5 ]; then
    echo "pytest collected no tests: that is a failure here" >&2
    exit 1
fi
exit "$status"
