"""Entry point wrapper for `python -m stages.<name>`: known input errors exit 2 with one clear line."""

from __future__ import annotations

import sys
from collections.abc import Callable


def run(main: Callable[[], None]) -> None:
    # Light imports only: every stage's command runs through here, and dvc.yaml lists what it imports.
    from stages._io import DataError, MissingPackageError, ModelError
    from stages._params import ParamsError

    try:
        main()
    except (DataError, MissingPackageError, ModelError, ParamsError) as err:
        stage = main.__module__.rsplit(".", 1)[-1]
        print(f"{stage}: error: {err}", file=sys.stderr)
        sys.exit(2)
