"""scripts/ansi_sgr.py: the SGR parser behind docs/console-*.png (scripts/screenshots.py)."""

from __future__ import annotations

from ansi_sgr import (
    DEFAULT_BG,
    DEFAULT_FG,
    PALETTE_16,
    Run,
    Style,
    last_screen,
    palette_256,
    parse,
    wrap,
)

RED, GREEN, BRIGHT_BLUE = PALETTE_16[1], PALETTE_16[2], PALETTE_16[12]


def test_plain_text_is_one_default_run_per_line() -> None:
    assert parse("a b\n\nc") == [[Run("a b", Style())], [], [Run("c", Style())]]


def test_16_colours_bold_and_reset() -> None:
    line = "\x1b[1;31mERR\x1b[0m ok \x1b[94mblue\x1b[42mon green\x1b[39;49mplain"
    assert parse(line) == [
        [
            Run("ERR", Style(fg=RED, bold=True)),
            Run(" ok ", Style()),
            Run("blue", Style(fg=BRIGHT_BLUE)),
            Run("on green", Style(fg=BRIGHT_BLUE, bg=GREEN)),
            Run("plain", Style()),
        ]
    ]


def test_empty_sgr_resets_and_22_ends_bold_and_dim() -> None:
    assert parse("\x1b[1;2mx\x1b[22my\x1b[31mz\x1b[mw") == [
        [
            Run("x", Style(bold=True, dim=True)),
            Run("y", Style()),
            Run("z", Style(fg=RED)),
            Run("w", Style()),
        ]
    ]


def test_256_colours_and_truecolor() -> None:
    assert palette_256(9) == PALETTE_16[9]
    assert palette_256(16) == (0, 0, 0)
    assert palette_256(196) == (255, 0, 0)
    assert palette_256(244) == (128, 128, 128)
    assert parse("\x1b[38;5;196ma\x1b[48;2;1;2;3mb\x1b[38:2:300:7:8mc") == [
        [
            Run("a", Style(fg=(255, 0, 0))),
            Run("b", Style(fg=(255, 0, 0), bg=(1, 2, 3))),
            Run("c", Style(fg=(255, 7, 8), bg=(1, 2, 3))),  # colon form; 300 clamped to 255
        ]
    ]


def test_style_carries_over_line_ends() -> None:
    assert parse("\x1b[32mone\ntwo\x1b[0m") == [
        [Run("one", Style(fg=GREEN))],
        [Run("two", Style(fg=GREEN))],
    ]


def test_malformed_and_other_escapes_are_dropped_not_printed() -> None:
    text = "\x1b[38;5mA\x1b[38;5;999mB\x1b[2KC\x1b]0;title\x07D\x1b(BE\x1b[?25lF"
    runs = parse(text)[0]
    assert "".join(run.text for run in runs) == "ABCDEF"
    assert all(run.style == Style() for run in runs)


def test_reverse_swaps_the_colours_to_draw() -> None:
    assert Style(fg=RED, reverse=True).colours() == (DEFAULT_BG, RED)
    assert Style(reverse=True).colours() == (DEFAULT_BG, DEFAULT_FG)
    assert Style(bg=GREEN).colours() == (DEFAULT_FG, GREEN)


def test_wrap_cuts_rows_at_the_width_across_runs_and_drops_trailing_blanks() -> None:
    red = Style(fg=RED)
    line = [Run("abcd", Style()), Run("efg   ", red), Run("  ", Style())]
    assert wrap(line, 3) == [
        [Run("abc", Style())],
        [Run("d", Style()), Run("ef", red)],
        [Run("g", red)],
    ]
    assert wrap([], 3) == [[]]  # an empty line is one empty row
    assert wrap([Run("   ", Style(bg=GREEN))], 2) == [
        [Run("  ", Style(bg=GREEN))],
        [Run(" ", Style(bg=GREEN))],  # a background shows: kept
    ]


def test_last_screen_is_the_bottom_rows_and_the_whole_lines_they_show() -> None:
    lines = parse("first\nsecond line\n\x1b[31mthird\x1b[0m")
    screen, texts = last_screen(lines, columns=4, rows=4)
    # 4 wide: "firs" "t" | "seco" "nd l" "ine" | "thir" "d"; the last 4 rows shown
    assert ["".join(run.text for run in row) for row in screen] == ["nd l", "ine", "thir", "d"]
    assert screen[2] == [Run("thir", Style(fg=RED))]
    assert texts == ["second line", "third"]  # the partly shown line whole, unwrapped
    assert last_screen(parse("a"), columns=4, rows=3) == ([[Run("a", Style())]], ["a"])
