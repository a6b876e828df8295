"""The README documents every node parameter, the two commands it promises and the benchmark's script."""

from __future__ import annotations

from pathlib import Path

from seem_ros.ros.parameters import PARAMETERS

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def test_readme_documents_every_parameter_with_its_default() -> None:
    missing = [spec.name for spec in PARAMETERS if f"| `{spec.name}` |" not in README]
    assert not missing, f"parameters missing from README.md: {missing}"


def test_readme_commands_exist_and_ci_runs_the_test_command() -> None:
    root = Path(__file__).resolve().parents[1]
    for script in ("scripts/demo.sh", "scripts/test.sh", "scripts/bench.sh"):
        assert script in README and (root / script).is_file()
    assert "scripts/test.sh" in (root / ".ci" / "run").read_text(encoding="utf-8")
