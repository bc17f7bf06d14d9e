"""``python -m scalekit`` and the ``scalekit`` command: needs the ``cli`` extra (click)."""

from __future__ import annotations

import sys


def main() -> None:
    """Run the command, or say in one line how to install it."""
    try:
        from scalekit._cli import main as cli
    except ImportError as error:
        if error.name != "click":
            raise
        print(  # noqa: T201 - the one line a missing extra gets
            "scalekit: the command needs click: pip install 'scalekit-blocks[cli]'", file=sys.stderr
        )
        sys.exit(1)
    cli(prog_name="scalekit")


if __name__ == "__main__":
    main()
