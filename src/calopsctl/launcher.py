"""The ``calops`` entry point: the command line, or one sentence when its extra is missing.

``pip install calops`` installs the model alone (and ``calops[serve]`` the API); the command
line needs ``calops[cli]``. Without it, ``calops`` says so instead of an ImportError.
"""

from __future__ import annotations

import sys
from typing import Final

CLI_PACKAGES: Final = ("typer", "rich", "click", "httpx", "mlflow", "python_on_whales")


def main() -> None:
    """Run the ``calops`` Typer app."""
    try:
        from calopsctl.cli import app
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] not in CLI_PACKAGES:
            raise
        sys.stderr.write(
            f"Error: the calops command line needs its 'cli' extra ({exc.name} is not "
            "installed); install it with: pip install 'calops[cli]'\n"
        )
        raise SystemExit(1) from None
    app()


if __name__ == "__main__":  # `python -m calopsctl.launcher`, as a checkout runs `calops`
    main()
