"""Spawn -> ready -> liveness -> restart -> stop: the states, the main loop, one run of vLLM,
probes, the restart policy, the process tree, the run record, systemd notifications and the
status file.

May import: `config`, `launch`, `logs`, `files`.
"""
