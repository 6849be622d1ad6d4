"""Fake of ``vllm.entrypoints``: only the OpenAI API server entry point exists."""
