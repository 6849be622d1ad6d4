"""Entry point run by ``python -m vllm.entrypoints.openai.api_server``."""

import sys
import warnings

from vllm._fake.launch import main

# vLLM 0.32 prints both deprecation warnings (with its missing space) on stderr before
# anything else; a log pump sees them first, so the fake prints them too.
warnings.warn(
    "`vllm.entrypoints.openai.api_server` is deprecated and will likely be"
    "unsupported in a future version. Use the corresponding function from "
    "`vllm.entrypoints.launchers` instead.",
    DeprecationWarning,
    stacklevel=1,
)

if __name__ == "__main__":
    warnings.warn(
        "The `python -m vllm.entrypoints.openai.api_server` command is deprecated "
        "and may be removed in a future release. Please use `vllm server` instead.",
        DeprecationWarning,
        stacklevel=1,
    )
    sys.exit(main())
