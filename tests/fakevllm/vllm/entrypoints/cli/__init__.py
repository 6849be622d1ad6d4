"""Fake of ``vllm.entrypoints.cli``: only ``serve`` exists."""
