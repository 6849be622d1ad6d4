"""Spawn -> ready -> liveness -> restart -> stop: the states, the main loop (the restart
policy), the run watcher (one run: readiness, liveness, outcome), the reporter (state changes
to the log, systemd and the status file), the incident dispatcher, the edges they are handed
(`seams`), one run of vLLM, probes, the process tree, the run record and systemd notifications.

May import: `config`, `launch`, `logs`, `files`, `control`, `output`, `gpu`.
"""
