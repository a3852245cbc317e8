"""A user's mistake on the command line reads as one message, not 30 frames of jsonargparse.

LightningCLI builds the model, data and callbacks inside jsonargparse, so a clear error of ours
(``ε < 0``, an unknown attack, a bad manifest row) arrives wrapped in jsonargparse's own
exception with its traceback and a dump of the whole config. :func:`run_cli` prints the original
message alone — the deepest exception of the chain that medrobust's own code raised, when it is
a user error (``ValueError``, ``TypeError``, ``KeyError``, ``FileNotFoundError``) — and exits
with status 1. ``--debug`` (or ``MEDROBUST_DEBUG=1``) keeps the full traceback; any other
exception (a bug, out of memory) is never shortened.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["COMMAND_ERRORS", "command_error", "run_cli", "strip_debug", "user_error"]

USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, TypeError, KeyError, FileNotFoundError)
#: what ``medrobust evaluate`` / ``certify`` report as one line with exit status 2
COMMAND_ERRORS: tuple[type[BaseException], ...] = (ValueError, TypeError, FileNotFoundError, RuntimeError,
                                                   json.JSONDecodeError)
#: the folder holding medrobust's packages (its frames are "our code")
_ROOT = Path(__file__).resolve().parent.parent


def strip_debug(args: list[str]) -> tuple[list[str], bool]:
    """``args`` without ``--debug``, and whether it was there (or ``MEDROBUST_DEBUG=1``)."""
    rest = [a for a in args if a != "--debug"]
    return rest, len(rest) != len(args) or os.environ.get("MEDROBUST_DEBUG", "") not in ("", "0")


def _raised_by_us(exc: BaseException) -> bool:
    tb = exc.__traceback__
    last = None
    while tb is not None:
        last = tb.tb_frame.f_code.co_filename
        tb = tb.tb_next
    if last is None:
        return False
    path = Path(last).resolve()
    return path.is_relative_to(_ROOT) and "site-packages" not in path.parts and ".venv" not in path.parts


def user_error(exc: BaseException) -> BaseException | None:
    """The deepest exception in ``exc``'s cause/context chain that medrobust's code raised as a
    user error, or ``None``."""
    chain: list[BaseException] = []
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        chain.append(e)
        e = e.__cause__ or e.__context__
    for e in reversed(chain):
        if isinstance(e, USER_ERRORS) and _raised_by_us(e):
            return e
    return None


def run_cli(main: Callable[[list[str]], Any], args: list[str], debug: bool) -> Any:
    """``main(args)``; a user error of ours becomes one line on stderr and exit status 1."""
    if debug:
        os.environ["MEDROBUST_DEBUG"] = "1"  # DDP workers restart from sys.argv: keep the choice
        return main(args)
    try:
        return main(args)
    except Exception as exc:  # noqa: BLE001 — re-raised unless it is a user error of ours
        err = user_error(exc)
        if err is None:
            raise
        text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
        print(f"medrobust: error: {text}\n(add --debug for the traceback)", file=sys.stderr)
        raise SystemExit(1) from None


def command_error(command: str, err: BaseException, debug: bool) -> int:
    """``medrobust <command>: error: <err>`` on stderr (after the traceback with ``debug``);
    returns the exit status 2."""
    if debug:
        traceback.print_exc()
    print(f"medrobust {command}: error: {err}", file=sys.stderr)
    return 2
