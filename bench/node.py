"""Section `node`: end-to-end latency of the ROS 2 node (image message in, result messages out).

Not measured yet: this is the place for it. `run_node_section` receives the parsed command line and
returns result rows like the other sections (dicts with "section", "preset", "backend", "stage",
"median_s", "p90_s", "repeats"), or one row with "skipped" and its reason.
"""

from __future__ import annotations

import argparse

SECTION = "node"


def run_node_section(args: argparse.Namespace) -> list[dict]:
    """Rows of the node latency section (currently one skipped row)."""
    return [{"section": SECTION, "skipped": "ROS node end-to-end latency is not measured yet"}]
