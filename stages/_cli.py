"""Entry point wrapper for `python -m stages.<name>`: known input errors exit 2 with one clear line."""

from __future__ import annotations

import sys
from collections.abc import Callable


def run(main: Callable[[], None]) -> None:
    # Light imports only: every stage's command runs through here, and dvc.yaml lists what it imports.
    from stages._io import DataError, MissingPackageError, ModelError
    from stages._params import ParamsError

    stage = stage_name(main)
    # argparse names its program after argv[0]: `python -m stages.prepare` would say "__main__.py".
    sys.argv[0] = stage
    try:
        main()
    except (DataError, MissingPackageError, ModelError, ParamsError) as err:
        print(f"{stage}: error: {err}", file=sys.stderr)
        sys.exit(2)


def stage_name(main: Callable[[], None]) -> str:
    """`prepare` for stages.prepare's main, whether it was imported or run with `python -m`."""
    module = main.__module__
    if module == "__main__":
        spec = getattr(sys.modules["__main__"], "__spec__", None)
        module = spec.name if spec is not None else module
    return module.rsplit(".", 1)[-1]
