"""Ctrl-C or SIGTERM while a node's modules are still loading (torch and the model code take a second or
two) ends the process quietly, as one during the node's build does (`node_runner.run_node`), instead of with
the traceback of whichever import it interrupted. Call `stop_quietly_while_starting` first thing in a node's
module; `run_node` installs the node's own handlers once it runs."""

from __future__ import annotations

import signal
import sys


def stop_quietly_while_starting() -> None:
    for signal_number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signal_number, _exit_quietly)


def _exit_quietly(_signal_number: int, _frame: object) -> None:
    sys.exit(0)
