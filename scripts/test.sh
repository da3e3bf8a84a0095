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
cargo test --workspace
