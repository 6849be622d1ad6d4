"""vLLM's output -> events: taking lines apart, telling vLLM's words from a client's, the rule
table, the scanner, and the pump that feeds the log file, the journal and the supervisor.

May import: `files`, and `output` (the one writer the echo goes through). Knows nothing of
configs or processes.
"""
