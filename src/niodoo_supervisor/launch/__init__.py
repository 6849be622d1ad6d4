"""Config + installed vLLM -> the exact command that starts it: inspecting the vLLM install,
preflight checks of the machine (files, port, adapters, flags), rendering argv and environment.

May import: `config`, `files`. Never starts vLLM.
"""
