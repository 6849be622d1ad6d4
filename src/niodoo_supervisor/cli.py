"""Command-line entry point (filled in by the config/render work)."""


def main() -> int:
    return 0
