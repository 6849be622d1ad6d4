"""The supervisor's exit codes (documented in the README; systemd's unit relies on them)."""

from __future__ import annotations

__all__ = [
    "CONFIG",
    "CRASH_LOOP",
    "INTERNAL",
    "NOT_RUNNING",
    "OK",
    "REFUSED",
    "TEMPFAIL",
    "USAGE",
    "WARNINGS",
]

OK = 0
# `check --strict`: only warnings were found.
WARNINGS = 1
# Command-line usage error (argparse's own code).
USAGE = 2
# `status`, `restart`, ...: no supervisor is running for this config.
NOT_RUNNING = 3
# `restart`, `adapters`: the supervisor refused the command (the line printed says why). A
# refused `reload` exits CONFIG: the new config is what is wrong.
REFUSED = 4
# vLLM kept failing: the crash-loop limit was reached (EX_UNAVAILABLE). systemd may retry later.
CRASH_LOOP = 69
# A bug in the supervisor (EX_SOFTWARE); the one-line message asks for a report.
INTERNAL = 70
# A condition that may clear by itself (EX_TEMPFAIL): a full disk, the state folder not yet
# writable. systemd restarts the unit, unlike for CONFIG.
TEMPFAIL = 75
# The config, or something it names, is wrong and retrying cannot fix it (EX_CONFIG): bad YAML,
# an adapter rank above max_lora_rank, an unknown flag, a taken port. systemd must not restart.
CONFIG = 78
