"""`${VAR}` expansion in config strings.

`${VAR}` takes the variable (an error when unset), `${VAR:-default}` falls back to the default
when it is unset or empty, and `$$` is a literal `$`. Nothing else is special, so a `$` in a
password or a regex needs no escaping unless a `{` follows it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

__all__ = ["ExpansionError", "expand"]

_TOKEN = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|\$\{[^}]*\}?")


class ExpansionError(ValueError):
    pass


def expand(text: str, environ: Mapping[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
        whole = match.group(0)
        if whole == "$$":
            return "$"
        name, default = match.group(1), match.group(2)
        if name is None:
            raise ExpansionError(
                f"malformed variable reference {whole!r}; write ${{NAME}} or ${{NAME:-default}}"
            )
        value = environ.get(name)
        if default is not None:
            return value if value else default
        if value is None:
            raise ExpansionError(
                f"environment variable {name} is not set; set it, or write ${{{name}:-default}}"
            )
        return value

    return _TOKEN.sub(replace, text)
