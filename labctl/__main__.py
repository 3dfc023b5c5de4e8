"""``python -m labctl`` = ``labctl``: the lab's one command line (labctl.cli)."""

from labctl.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
