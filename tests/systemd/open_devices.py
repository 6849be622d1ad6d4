"""Run inside the container as the service would run: open each device node given and write
what happened (OK or the errno's name) as JSON to the file named first. Python 3.9 and up."""

from __future__ import annotations

import errno
import json
import os
import sys
from pathlib import Path


def outcome(path: str) -> str:
    try:
        os.close(os.open(path, os.O_RDWR))
    except OSError as error:
        return errno.errorcode.get(error.errno or 0, str(error.errno))
    return "OK"


def main() -> None:
    report, *nodes = sys.argv[1:]
    with Path(report).open("w") as out:
        json.dump({node: outcome(node) for node in nodes}, out)


if __name__ == "__main__":
    main()
