"""The README documents every node parameter, the two commands it promises and the benchmark's script."""

from __future__ import annotations

from pathlib import Path

from seem_ros.ros.parameters import PARAMETERS, seem_yaml, with_readme_table

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
REGENERATE = "regenerate it with `python -m seem_ros.ros.parameters --write`"


def test_readme_documents_every_parameter_with_its_default() -> None:
    missing = [spec.name for spec in PARAMETERS if f"| `{spec.name}` |" not in README]
    assert not missing, f"parameters missing from README.md: {missing}"
    assert with_readme_table(README) == README, f"README.md's parameter table is out of date: {REGENERATE}"


def test_seem_yaml_is_generated_from_the_parameter_table() -> None:
    written = (ROOT / "config" / "seem.yaml").read_text(encoding="utf-8")
    assert written == seem_yaml(), f"config/seem.yaml is out of date: {REGENERATE}"


def test_readme_commands_exist_and_ci_runs_the_test_command() -> None:
    root = Path(__file__).resolve().parents[1]
    for script in ("scripts/demo.sh", "scripts/test.sh", "scripts/bench.sh"):
        assert script in README and (root / script).is_file()
    assert "scripts/test.sh" in (root / ".ci" / "run").read_text(encoding="utf-8")
