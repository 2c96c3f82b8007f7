"""``python -m backdoorkit ...``: the same as the ``backdoorkit`` console script."""

from __future__ import annotations

from backdoorkit.cli import main

if __name__ == "__main__":
    main()
