"""``python -m labctl``: the command line behind ``make up/down/status/clean/logs``."""

from labctl.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
