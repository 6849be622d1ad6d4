"""Fake of ``vllm.entrypoints.openai``."""
