"""YAML -> a validated config: the key tables (vLLM options and the supervisor's own settings),
loading with every problem at once, and the generated docs and JSON Schema.

May import: `files` (reading the YAML), `logs.operator_rules` (compiling the `rules` key).
Nothing here touches the network, the installed vLLM or a process.
"""
