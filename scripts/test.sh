#!/usr/bin/env bash
# The test command: sets up what the tests need, then runs them all.
#   - a Python venv with Hugging Face `datasets` (to load the outputs the way
#     a trainer does) and the official `openai` client (to call `cai serve`
#     the way applications do), reused between runs;
#   - the default local model (SmolLM2-135M-Instruct Q4_1), fetched once
#     into the model cache by `cai model fetch`;
#   - Debian's `chromium` and `websocket-client` (in the venv), for the
#     report test that opens a page in a real headless browser;
#   - Debian's `z3`, the solver `cai serve`'s `z3` approach runs.
# Nothing here contacts anything but the package registries; the tests
# themselves talk only to servers on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."

venv="${CAI_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/cai-test-venv}"
if ! "$venv/bin/python" -c 'import datasets, websocket, openai' 2>/dev/null; then
    echo "test.sh: creating $venv with datasets, websocket-client and openai" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check datasets websocket-client openai
fi
export CAI_PYTHON="$venv/bin/python"

# Headless Chromium (Debian's package) for the report's browser test.
if [ ! -x /usr/bin/chromium ]; then
    echo "test.sh: installing chromium" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
fi

# The SMT solver of `cai serve`'s z3 approach (Debian's package).
if ! command -v z3 >/dev/null; then
    echo "test.sh: installing z3" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq z3
fi

cargo build --workspace --all-targets
target="${CARGO_TARGET_DIR:-target}"
"$target/debug/cai" model fetch
# The engine's own tests (crates/cai-local) find the model here.
CAI_TEST_MODEL=$("$target/debug/cai" model path)
export CAI_TEST_MODEL
status=0
cargo test --workspace --all-targets --no-fail-fast -- "$@" || status=$?

# The run above used the fastest kernels this CPU has. The embedded model's
# kernel tests, family fixtures (logits against llama.cpp's) and generation
# tests run again on every slower ISA path it can run (CAI_LOCAL_ISA), so the
# paths of CPUs without AVX-512 or AVX-VNNI are covered on this one.
# tests/isa.rs is not repeated: it already runs every path in one process.
flags=" $(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null | cut -d: -f2) "
has() { [[ "$flags" == *" $1 "* ]]; }
isas=(scalar)
if has avx2 && has fma && has f16c; then
    isas+=(avx2)
    if has avx_vnni; then
        isas+=(avxvnni)
        has avx512f && isas+=(avx512)
    fi
fi
unset 'isas[${#isas[@]}-1]'
for isa in "${isas[@]}"; do
    echo "test.sh: cai-local tests with CAI_LOCAL_ISA=$isa" >&2
    # --workspace (not -p cai-local): the same feature set as the run above, so
    # nothing is compiled again; the other crates' unit tests are fast.
    CAI_LOCAL_ISA=$isa cargo test --workspace --lib --test families --test model --no-fail-fast -- "$@" || status=$?
done
exit "$status"
