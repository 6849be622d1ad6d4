"""The demo's tiny Qwen2 model, its tokenizer and LoRA adapters, generated locally.

Imports nothing else of the project, and the daemon never imports it.
"""
