"""``python -m app load|convert|bench|check ...``"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {"load": "app.cli", "convert": "app.convert_pool", "bench": "app.bench",  # convert: plus --workers, --dask
            "check": "app.check"}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: python -m app {load,convert,bench,check} ...", file=sys.stderr if argv else sys.stdout)
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    try:
        module = importlib.import_module(COMMANDS[argv[0]])
    except ModuleNotFoundError as exc:
        if exc.name == COMMANDS[argv[0]]:
            print(f"error: the {argv[0]} command is not available ({exc.name} is missing)", file=sys.stderr)
            return 2
        raise
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
