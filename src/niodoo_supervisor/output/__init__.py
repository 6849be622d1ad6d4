"""What a person and the journal see: the one writer of the supervisor's stdout and stderr
(whole lines, one lock), the two renderings of its records (a compact console line; logfmt or
JSON with every field for the journal), the journal's priority prefixes, and vLLM's echoed
lines.

May import: nothing of the project (a leaf: `supervise`, `logs` and `cli` use it).
"""
