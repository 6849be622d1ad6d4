"""YAML -> a validated config: the config models (one pydantic declaration per key, vLLM
options carrying their flag), the vLLM option table read off them, loading with every problem
at once, and the generated docs and JSON Schema.

May import: `files` (reading the YAML), `logs.rule_types` and `logs.operator_rules` (the
`rules` key). Nothing here touches the network, the installed vLLM or a process.
"""
