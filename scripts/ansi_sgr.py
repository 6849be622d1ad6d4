"""Terminal text with ANSI SGR escapes (what `tmux capture-pane -e` prints) as styled runs.

`parse` splits the text into lines of `Run`s, each a piece of text and the `Style` in force:
the 16 standard colours (30-37, 90-97 and their backgrounds), the 256-colour palette
(38;5;N), truecolor (38;2;R;G;B), bold, dim, italic, underline, reverse and the resets. Other
escape sequences (cursor moves, OSC titles) are dropped, as a terminal would not print them.
Colours are resolved to RGB here, so a renderer only draws.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any

__all__ = ["DEFAULT_BG", "DEFAULT_FG", "PALETTE_16", "Run", "Style", "last_screen", "parse", "wrap"]

RGB = tuple[int, int, int]

# xterm's default 16 colours: black, red, green, yellow, blue, magenta, cyan, white, then the
# bright ones.
PALETTE_16: tuple[RGB, ...] = (
    (0, 0, 0),
    (205, 0, 0),
    (0, 205, 0),
    (205, 205, 0),
    (0, 0, 238),
    (205, 0, 205),
    (0, 205, 205),
    (229, 229, 229),
    (127, 127, 127),
    (255, 0, 0),
    (0, 255, 0),
    (255, 255, 0),
    (92, 92, 255),
    (255, 0, 255),
    (0, 255, 255),
    (255, 255, 255),
)
DEFAULT_FG: RGB = (229, 229, 229)
DEFAULT_BG: RGB = (24, 24, 24)

# CSI (ESC [ params final), OSC (ESC ] ... BEL or ST), a character set (ESC ( B) and the
# two-byte escapes (ESC x).
_ESCAPE = re.compile(
    r"\x1b(?:\[(?P<params>[0-9;:?<=>]*)[ -/]*(?P<final>[@-~])"
    r"|\][^\x07\x1b]*(?:\x07|\x1b\\)|[()*+].|[@-Z\\-_])"
)


@dataclass(frozen=True)
class Style:
    fg: RGB | None = None  # None: the terminal's default
    bg: RGB | None = None
    bold: bool = False
    dim: bool = False
    italic: bool = False
    underline: bool = False
    reverse: bool = False

    def colours(self) -> tuple[RGB, RGB | None]:
        """The foreground and background to draw (None: the default background), reverse
        applied."""
        fg, bg = self.fg or DEFAULT_FG, self.bg
        if self.reverse:
            return bg or DEFAULT_BG, fg
        return fg, bg


@dataclass(frozen=True)
class Run:
    text: str
    style: Style


def palette_256(index: int) -> RGB:
    """xterm's 256 colours: the 16, a 6x6x6 cube, then 24 greys."""
    if index < 16:
        return PALETTE_16[index]
    if index < 232:
        index -= 16
        levels = (0, 95, 135, 175, 215, 255)
        return levels[index // 36], levels[index // 6 % 6], levels[index % 6]
    grey = 8 + 10 * (index - 232)
    return grey, grey, grey


def _extended(codes: list[int], i: int) -> tuple[RGB | None, int]:
    """An extended colour at codes[i] (after 38 or 48): its RGB and the index past it. A
    malformed one yields None and consumes the rest."""
    if i < len(codes) and codes[i] == 5 and i + 1 < len(codes):
        return (palette_256(codes[i + 1]) if 0 <= codes[i + 1] < 256 else None), i + 2
    if i < len(codes) and codes[i] == 2 and i + 3 < len(codes):
        r, g, b = (min(max(c, 0), 255) for c in codes[i + 1 : i + 4])
        return (r, g, b), i + 4
    return None, len(codes)


# SGR codes that set (True) or clear (False) one attribute.
_FLAGS: dict[int, tuple[str, bool]] = {
    1: ("bold", True),
    2: ("dim", True),
    3: ("italic", True),
    4: ("underline", True),
    7: ("reverse", True),
    23: ("italic", False),
    24: ("underline", False),
    27: ("reverse", False),
}


def apply_sgr(style: Style, params: str) -> Style:
    """The style after one SGR sequence (`params` as between `ESC [` and `m`)."""
    codes = [int(p) if p.isdigit() else 0 for p in params.replace(":", ";").split(";")]
    i = 0
    while i < len(codes):
        code = codes[i]
        i += 1
        if code == 0:
            style = Style()
        elif code == 22:  # neither bold nor dim
            style = replace(style, bold=False, dim=False)
        elif code in _FLAGS:
            name, value = _FLAGS[code]
            flag: dict[str, Any] = {name: value}
            style = replace(style, **flag)
        elif 30 <= code <= 37 or 90 <= code <= 97:
            style = replace(style, fg=PALETTE_16[code - 30 if code < 90 else code - 82])
        elif 40 <= code <= 47 or 100 <= code <= 107:
            style = replace(style, bg=PALETTE_16[code - 40 if code < 100 else code - 92])
        elif code == 39:
            style = replace(style, fg=None)
        elif code == 49:
            style = replace(style, bg=None)
        elif code in (38, 48):
            colour, i = _extended(codes, i)
            if colour is not None:
                style = replace(style, fg=colour) if code == 38 else replace(style, bg=colour)
    return style


def parse(text: str) -> list[list[Run]]:
    """The text's lines as styled runs; a style carries over line ends, as on a terminal."""
    lines: list[list[Run]] = []
    style = Style()
    for raw in text.split("\n"):
        runs: list[Run] = []
        pos = 0
        for match in _ESCAPE.finditer(raw):
            if match.start() > pos:
                runs.append(Run(raw[pos : match.start()], style))
            if match.group("final") == "m":
                style = apply_sgr(style, match.group("params") or "0")
            pos = match.end()
        if pos < len(raw):
            runs.append(Run(raw[pos:], style))
        lines.append(_merged(runs))
    return lines


def _merged(runs: list[Run]) -> list[Run]:
    merged: list[Run] = []
    for run in runs:
        if merged and merged[-1].style == run.style:
            merged[-1] = Run(merged[-1].text + run.text, run.style)
        else:
            merged.append(run)
    return merged


def wrap(line: list[Run], columns: int) -> list[list[Run]]:
    """One line as the rows a terminal `columns` wide shows (one cell per character); blanks at
    its end without a background are dropped, as a terminal does not show them."""
    runs = list(line)
    while runs and runs[-1].style.bg is None and not runs[-1].style.reverse:
        text = runs[-1].text.rstrip(" ")
        if text:
            runs[-1] = Run(text, runs[-1].style)
            break
        runs.pop()
    rows: list[list[Run]] = [[]]
    free = columns
    for run in runs:
        text = run.text
        while text:
            if free == 0:
                rows.append([])
                free = columns
            rows[-1].append(Run(text[:free], run.style))
            text = text[free:]
            free -= len(rows[-1][-1].text)
    return rows


def last_screen(
    lines: list[list[Run]], columns: int, rows: int
) -> tuple[list[list[Run]], list[str]]:
    """The last `rows` rows the lines fill on a terminal `columns` wide, and the plain text of
    the lines those rows show (whole, unwrapped)."""
    placed = [(index, row) for index, line in enumerate(lines) for row in wrap(line, columns)]
    shown = placed[-rows:]
    first_line = shown[0][0] if shown else len(lines)
    texts = ["".join(run.text for run in line).rstrip() for line in lines[first_line:]]
    return [row for _, row in shown], texts
