#!/usr/bin/env bash
# End-to-end benchmark of the embedded local model (issue 14), in one run on
# one machine:
#   readme  the README's first command (8 shipped harmless prompts, default
#           model), this tree's `cai` against the `cai` from before issue 14
#           (commit 525afda^1: one KV cache per request, no batching);
#   stem    4 shipped STEM prompts, tutor constitution, --max-tokens 160,
#           --seed 1: the embedded model against `cai --provider openai`
#           driving llama.cpp's server (llama-cpp-python) on the same GGUF;
#   batch   aggregate generation tokens/s with 1, 2 and 4 sequences at once
#           (crates/cai-local/examples/bench_local.rs).
# A/B runs alternate (A B, then B A, ...) so both sides see the same load;
# every run prints its wall time, tokens, peak RSS (from /usr/bin/time) and
# the machine's load average before and after it.
#
#   scripts/bench_local_chain.sh                  # everything, 2 rounds
#   ROUNDS=3 ONLY=stem scripts/bench_local_chain.sh
#
# Environment:
#   ROUNDS        A/B rounds per workload (default 2)
#   ONLY          comma-separated subset of readme,stem,batch (default all)
#   CAI_AFTER     the `cai` binary to measure (default: built here, release)
#   CAI_BEFORE    the pre-issue-14 `cai` (default: built from 525afda^1 in a
#                 git worktree at $BEFORE_TREE, target dir $BEFORE_TARGET)
#   LLAMA_PYTHON  a Python with llama-cpp-python[server] (default python3).
#                 In a VM that hides AMX state (Firecracker), a native build
#                 dies with "Illegal instruction" on the first request; build
#                 it with CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON
#                 -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=ON
#                 -DGGML_AVX512_VNNI=ON -DGGML_AVX_VNNI=ON -DGGML_AMX_TILE=OFF
#                 -DGGML_AMX_INT8=OFF" pip install llama-cpp-python[server]
#   BENCH_DIR     where run directories and logs go (default: a temp dir)
# Needs: the default model in the cache (`cai model fetch`), /usr/bin/time,
# jq. Talks only to 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

ROUNDS=${ROUNDS:-2}
ONLY=${ONLY:-readme,stem,batch}
LLAMA_PYTHON=${LLAMA_PYTHON:-python3}
BENCH_DIR=${BENCH_DIR:-$(mktemp -d -t cai-bench-XXXXXX)}
BEFORE_REV=525afda^1
BEFORE_TREE=${BEFORE_TREE:-/tmp/cai-before}
BEFORE_TARGET=${BEFORE_TARGET:-$BEFORE_TREE/target}
mkdir -p "$BENCH_DIR"
results="$BENCH_DIR/results.tsv"
: >"$results"

want() { [[ ",$ONLY," == *",$1,"* ]]; }
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
say() { printf '%s\n' "$*" >&2; }

# --- binaries ---------------------------------------------------------------
if [ -z "${CAI_AFTER:-}" ] || { want batch && [ -z "${BENCH_LOCAL:-}" ]; }; then
    say "building this tree (release): cai, bench_local"
    cargo build --release --quiet --bin cai
    cargo build --release --quiet -p cai-local --example bench_local
fi
target_dir=$(cargo metadata --format-version 1 --no-deps | jq -r .target_directory)
CAI_AFTER=${CAI_AFTER:-$target_dir/release/cai}
BENCH_LOCAL=${BENCH_LOCAL:-$target_dir/release/examples/bench_local}
if want readme && [ -z "${CAI_BEFORE:-}" ]; then
    if [ ! -d "$BEFORE_TREE" ]; then
        git worktree add --detach "$BEFORE_TREE" "$BEFORE_REV" >&2
    fi
    say "building $BEFORE_REV (release) in $BEFORE_TREE"
    (cd "$BEFORE_TREE" && CARGO_TARGET_DIR="$BEFORE_TARGET" cargo build --release --quiet --bin cai)
    CAI_BEFORE=$BEFORE_TARGET/release/cai
fi
model=$("$CAI_AFTER" model path)
if [ ! -f "$model" ]; then
    say "the default model is not cached: run \`$CAI_AFTER model fetch\` first"
    exit 2
fi

# --- one measured `cai generate` --------------------------------------------
# run WORKLOAD VARIANT ROUND BINARY ARGS...: one fresh run directory; prints
# and records wall seconds, requests, tokens out, rows, rejects, peak RSS.
run() {
    local workload=$1 variant=$2 round=$3 bin=$4
    shift 4
    local out="$BENCH_DIR/$workload-$variant-$round"
    rm -rf "$out"
    local l0 l1 code=0
    l0=$(loadavg)
    env -u OPENAI_API_KEY -u ANTHROPIC_API_KEY -u GEMINI_API_KEY \
        /usr/bin/time -f '%e %M' -o "$out.time" \
        "$bin" generate --out "$out" --quiet "$@" >"$out.log" 2>&1 || code=$?
    l1=$(loadavg)
    if [ "$code" -gt 1 ]; then
        say "$workload $variant round $round: exit $code (see $out.log)"
        tail -5 "$out.log" >&2
        return 1
    fi
    local wall rss_kib m=$out/manifest.json
    # The last line: GNU time puts "Command exited with non-zero status"
    # first when cai exits 1 (some prompts rejected).
    read -r wall rss_kib < <(tail -n 1 "$out.time")
    local requests tokens_out rows rejects
    requests=$(jq '.requests.requests // 0' "$m")
    tokens_out=$(jq '.requests.tokens_out // 0' "$m")
    rows=$(jq '.counts.sft_rows // 0' "$m")
    rejects=$(jq '.counts.rejected // 0' "$m")
    local rss_mib=$((rss_kib / 1024))
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$workload" "$variant" "$round" \
        "$wall" "$requests" "$tokens_out" "$rows" "$rejects" "$rss_mib" "$l0 -> $l1" >>"$results"
    printf '%-7s %-10s round %s  %7.1f s  %3s requests  %5s tokens out  %s rows  %s rejected  peak RSS %4s MiB  load %s -> %s\n' \
        "$workload" "$variant" "$round" "$wall" "$requests" "$tokens_out" "$rows" "$rejects" \
        "$rss_mib" "$l0" "$l1"
}

echo "machine          $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
echo "load average     $(loadavg) (start, $(date -u '+%Y-%m-%d %H:%M UTC'))"
echo "model            $model"
echo "after            $CAI_AFTER ($(git -C "$repo" rev-parse --short HEAD))"
[ -n "${CAI_BEFORE:-}" ] && echo "before           $CAI_BEFORE ($BEFORE_REV)"
echo "runs in          $BENCH_DIR"
echo

readme=(--prompts prompts/harmless_sample.csv --constitution principles/harmless.json --limit 8 --on-length keep)
stem=(--prompts prompts/stem_sample.csv --constitution principles/helpful_tutor.json
    --limit 4 --max-tokens 160 --seed 1)

# --- (a) the README's first command, before vs after ------------------------
if want readme; then
    for r in $(seq 1 "$ROUNDS"); do
        if ((r % 2)); then
            run readme before "$r" "$CAI_BEFORE" "${readme[@]}"
            run readme after "$r" "$CAI_AFTER" "${readme[@]}"
        else
            run readme after "$r" "$CAI_AFTER" "${readme[@]}"
            run readme before "$r" "$CAI_BEFORE" "${readme[@]}"
        fi
    done
fi

# --- (b) STEM chain: embedded vs llama.cpp's server -------------------------
server_pid=
stop_server() {
    if [ -n "$server_pid" ]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
        server_pid=
    fi
}
trap stop_server EXIT
if want stem; then
    port=$("$LLAMA_PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    # The server's defaults except the context (SmolLM2 has 8192; the
    # default 2048 cannot hold a critique/revision request of this chain)
    # and the threads: every core, as cai uses (the default is half).
    "$LLAMA_PYTHON" -m llama_cpp.server --model "$model" --model_alias smollm2 \
        --host 127.0.0.1 --port "$port" --n_ctx 8192 --verbose false \
        --n_threads "$(nproc)" --n_threads_batch "$(nproc)" \
        >"$BENCH_DIR/llama-server.log" 2>&1 &
    server_pid=$!
    for _ in $(seq 1 120); do
        curl -sf "http://127.0.0.1:$port/v1/models" >/dev/null 2>&1 && break
        kill -0 "$server_pid" 2>/dev/null || { say "llama.cpp server died:"; tail "$BENCH_DIR/llama-server.log" >&2; exit 1; }
        sleep 0.5
    done
    server=(--provider openai --base-url "http://127.0.0.1:$port/v1" --model smollm2)
    alive() {
        kill -0 "$server_pid" 2>/dev/null && return
        say "llama.cpp's server died during the run (see $BENCH_DIR/llama-server.log):"
        tail -3 "$BENCH_DIR/llama-server.log" >&2
        exit 1
    }
    for r in $(seq 1 "$ROUNDS"); do
        if ((r % 2)); then
            run stem cai "$r" "$CAI_AFTER" "${stem[@]}"
            run stem llama.cpp "$r" "$CAI_AFTER" "${server[@]}" "${stem[@]}"
            alive
        else
            run stem llama.cpp "$r" "$CAI_AFTER" "${server[@]}" "${stem[@]}"
            alive
            run stem cai "$r" "$CAI_AFTER" "${stem[@]}"
        fi
    done
    server_rss=$(awk '/VmHWM/ {print int($2/1024)}' "/proc/$server_pid/status" 2>/dev/null || echo "?")
    echo "llama.cpp server peak RSS $server_rss MiB (the llama.cpp rows' RSS is cai's own)"
    stop_server
fi

# --- (c) aggregate tokens/s with 1, 2, 4 sequences --------------------------
if want batch; then
    echo
    for r in $(seq 1 "$ROUNDS"); do
        echo "bench_local round $r"
        "$BENCH_LOCAL" "$model" | sed 's/^/  /'
    done
fi

# --- summary ----------------------------------------------------------------
echo
echo "summary (best and median wall time over $ROUNDS rounds; load average $(loadavg) at the end)"
summary() {
    local workload=$1 slow=$2 fast=$3
    awk -F'\t' -v w="$workload" -v a="$slow" -v b="$fast" '
        $1 == w { t[$2] = t[$2] " " $4; n[$2]++; rss[$2] = ($9 > rss[$2] ? $9 : rss[$2]); tok[$2] = tok[$2] " " $6
                  sum_t[$2] += $4; sum_tok[$2] += $6 }
        function best(s,   x, i, m) { split(s, x, " "); m = x[1]; for (i in x) if (x[i] + 0 < m + 0) m = x[i]; return m }
        function med(s,   x, k, i, j, tmp) { k = split(s, x, " ");
            for (i = 1; i <= k; i++) for (j = i + 1; j <= k; j++) if (x[j] + 0 < x[i] + 0) { tmp = x[i]; x[i] = x[j]; x[j] = tmp }
            return k % 2 ? x[(k + 1) / 2] : (x[k / 2] + x[k / 2 + 1]) / 2 }
        END {
            if (!n[a] || !n[b]) exit
            printf "  %-7s %-10s best %7.1f s, median %7.1f s, tokens out:%s, peak RSS %s MiB\n", w, a, best(t[a]), med(t[a]), tok[a], rss[a]
            printf "  %-7s %-10s best %7.1f s, median %7.1f s, tokens out:%s, peak RSS %s MiB\n", w, b, best(t[b]), med(t[b]), tok[b], rss[b]
            printf "  %-7s %s is %.2fx faster than %s (median wall time)\n", w, b, med(t[a]) / med(t[b]), a
            printf "  %-7s generated tokens per second: %s %.1f, %s %.1f (the two sides sample different text, so compare both)\n", w, a, sum_tok[a] / sum_t[a], b, sum_tok[b] / sum_t[b]
        }' "$results"
}
summary readme before after
summary stem llama.cpp cai
echo "per-run figures: $results"
