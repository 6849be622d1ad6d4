"""Config + installed vLLM -> the exact command that starts it: inspecting the vLLM install
(install.py), preflight checks of the machine that only report problems (preflight.py), and the
launch plan, the one place argv, environment, secrets and vLLM's logging config are made
(plan.py), shown redacted by render.py.

May import: `config`, `files`. Never starts vLLM.
"""
