#!/usr/bin/env bash
# The project's whole test suite: fetches the real models (once), then checks formatting,
# lints and runs every test of the workspace against the real models.
set -euo pipefail
cd "$(dirname "$0")/.."

SMQ_MODELS_DIR="$(scripts/fetch-models.sh | tail -n 1)"
export SMQ_MODELS_DIR
# Tests that need a real model fail instead of skipping when it is missing.
export SMQ_REQUIRE_MODELS=1

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings

# Run every test binary, keep cargo's exit status, and close with one line that sums
# all of them (cargo's own last line is only the last binary's, often the doc-tests).
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace 2>&1 | tee "$log" || status=$?
# The portable kernels (the only ones on ARM) against the same perplexity references:
# their prompts give the SIMD paths' bits, and this shows it on the real models.
SMQ_KERNEL_PATH=scalar cargo test -p smq-runtime --test model_reference perplexity 2>&1 |
    tee -a "$log" || status=$?
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed;?$/) p += $i; if ($(i+1) ~ /^failed;?$/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
