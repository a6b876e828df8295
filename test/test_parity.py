"""`seem-ros parity` against both official reference sets: every stored tensor is compared and within the
official tolerances; a corrupted tensor, an unknown tensor or an unresolvable vocabulary fail loudly."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from seem_ros.cli import main
from seem_ros.model.tokenizer import ClipTokenizer
from seem_ros.parity import CROSS_CHECK, TABLE_COLUMNS, ParityRow, format_table, run_parity

REPO_ROOT = Path(__file__).resolve().parents[1]
VOCABULARY_DEPENDENT = (
    "class_text_embeddings",
    "pred_logits",
    "aux_pred_logits",
    "sem_seg",
    "panoptic_seg",
    "instances_pred_masks",
    "instances_scores",
    "instances_pred_classes",
    "instances_flat_index",
    "instances_query_index",
    "instances_class_prob",
    "instances_pred_boxes",
)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> ClipTokenizer:
    return ClipTokenizer(cache_dir=tmp_path_factory.mktemp("seem_ros_cache"))


def _assert_all_ok(rows: list[ParityRow], reference: Path) -> None:
    failures = [row for row in rows if not row.ok]
    assert not failures, "\n" + format_table(failures)
    index = json.loads((reference / "index.json").read_text())
    for case in index["cases"]:
        stored = json.loads((reference / case / "case.json").read_text())["tensors"]
        compared = {row.tensor for row in rows if row.case == case}
        assert set(stored) <= compared, f"{case}: tensors without a row: {sorted(set(stored) - compared)}"


def test_focalt_reference_parity(reference_dir: Path, tokenizer: ClipTokenizer) -> None:
    _assert_all_ok(run_parity(reference_dir, tokenizer), reference_dir)


def test_samvit_reference_parity(samvit_reference_dir: Path, tokenizer: ClipTokenizer) -> None:
    _assert_all_ok(run_parity(samvit_reference_dir, tokenizer), samvit_reference_dir)


def test_parity_restores_the_global_generator(
    samvit_reference_dir: Path, tmp_path: Path, tokenizer: ClipTokenizer
) -> None:
    subset = _subset(samvit_reference_dir, tmp_path / "click", ["spatial_click"])
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    assert all(row.ok for row in run_parity(subset, tokenizer))
    assert torch.equal(torch.rand(3), expected)


def test_cli_subprocess(samvit_reference_dir: Path, tmp_path: Path) -> None:
    report = tmp_path / "rows.json"
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "SEEM_ROS_CACHE_DIR": str(tmp_path / "cache")}
    completed = subprocess.run(
        [sys.executable, "-m", "seem_ros.cli", "parity", str(samvit_reference_dir), "--json", str(report)],
        capture_output=True,
        text=True,
        env=environment,
        cwd=tmp_path,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    lines = completed.stdout.splitlines()
    assert lines[0].split() == ["model", "case", "stage", "tensor", "max", "abs", "err", "tolerance", "ok"]
    assert TABLE_COLUMNS[-1] == "ok"
    rows = json.loads(report.read_text())
    assert rows and all(row["ok"] for row in rows)
    assert lines[-1] == f"{len(rows)} rows over 3 cases: all ok"
    assert any("tiny_samvitb_v1" in line and "pred_smasks" in line and " ok" in line for line in lines)


def _subset(
    reference: Path, destination: Path, cases: list[str], edit: Callable[[Path], None] | None = None
) -> Path:
    """A reference set holding only `cases` (copied, then changed by `edit`), sharing the model files."""
    index = json.loads((reference / "index.json").read_text())
    destination.mkdir()
    for name in (index["model_file"], index["config_yaml"], index["config_json"], "images"):
        (destination / name).symlink_to(reference / name)
    for case in cases:
        shutil.copytree(reference / case, destination / case)
    index["cases"] = cases
    index["case_kinds"] = {case: index["case_kinds"][case] for case in cases}
    (destination / "index.json").write_text(json.dumps(index))
    if edit is not None:
        edit(destination)
    return destination


def _edit_tensors(folder: Path, change: Callable[[dict[str, torch.Tensor]], None]) -> None:
    tensors = load_file(folder / "tensors.safetensors")
    change(tensors)
    save_file(
        {key: value.clone().contiguous() for key, value in tensors.items()}, folder / "tensors.safetensors"
    )


def test_cli_fails_on_a_corrupted_tensor(reference_dir: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    def corrupt(directory: Path) -> None:
        def shift(tensors: dict[str, torch.Tensor]) -> None:
            tensors["pred_smasks"][0, 0, 10, 10] += 1e-2
            tensors["final_mask"][0, 0, 0] = 1 - tensors["final_mask"][0, 0, 0]

        _edit_tensors(directory / "spatial_click", shift)

    subset = _subset(reference_dir, tmp_path / "corrupted", ["spatial_click"], corrupt)
    monkeypatch.setenv("SEEM_ROS_CACHE_DIR", str(tmp_path / "cache"))
    assert main(["parity", str(subset)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == "20 rows over 1 cases: 2 FAILED"
    failed = [line for line in lines[:-1] if "FAILED" in line]
    assert len(failed) == 2
    assert " pred_smasks " in failed[0] and "1 of 24576 elements outside" in failed[0]
    assert " final_mask " in failed[1] and "1 pixels differ, 1 of them not near the threshold" in failed[1]


def test_unknown_tensor_is_a_failure(reference_dir: Path, tmp_path: Path, tokenizer: ClipTokenizer) -> None:
    def add_tensor(directory: Path) -> None:
        _edit_tensors(directory / "grounding", lambda tensors: tensors.update(new_output=torch.zeros(3)))

    rows = run_parity(_subset(reference_dir, tmp_path / "extra", ["grounding"], add_tensor), tokenizer)
    failed = [row for row in rows if not row.ok]
    assert [(row.tensor, row.note) for row in failed] == [("new_output", "no check")]


def _permuted_outputs(tensors: dict[str, torch.Tensor], order: list[int]) -> dict[str, torch.Tensor]:
    """The official panoptic outputs for the vocabulary reordered as `order` (new class j = old order[j]),
    background staying last: the same computation, so they follow from the stored ones exactly."""
    num_classes = len(order)
    columns = torch.tensor([*order, num_classes])
    new_index = torch.empty(num_classes, dtype=torch.long)
    new_index[torch.tensor(order)] = torch.arange(num_classes)
    classes = new_index[tensors["instances_pred_classes"]]
    permuted = {
        "class_text_embeddings": tensors["class_text_embeddings"][columns],
        "pred_logits": tensors["pred_logits"][..., columns],
        "aux_pred_logits": tensors["aux_pred_logits"][..., columns],
        "sem_seg": tensors["sem_seg"][torch.tensor(order)],
        "instances_pred_classes": classes,
        "instances_flat_index": tensors["instances_query_index"] * num_classes + classes,
    }
    return {name: permuted.get(name, tensors[name]) for name in VOCABULARY_DEPENDENT}


def test_switched_vocabulary_outputs_are_checked(
    reference_dir: Path, tmp_path: Path, tokenizer: ClipTokenizer
) -> None:
    """A panoptic case with a second vocabulary, switched at runtime, stores the outputs of the second one
    under an affix and gives the vocabulary in case.json. Here the second vocabulary is the first one in
    reverse order, whose official outputs follow from the stored ones."""

    def add_second_vocabulary(directory: Path) -> None:
        folder = directory / "panoptic"
        case = json.loads((folder / "case.json").read_text())
        names = case["vocabulary"][:-1]
        order = list(reversed(range(len(names))))
        case["vocabulary_2"] = [names[old] for old in order] + case["vocabulary"][-1:]
        case["thing_class_ids_2"] = sorted(order.index(old) for old in case["thing_class_ids"])
        (folder / "case.json").write_text(json.dumps(case))

        def add(tensors: dict[str, torch.Tensor]) -> None:
            second = _permuted_outputs(tensors, order)
            tensors.update({f"vocab2_{name}": value for name, value in second.items()})

        _edit_tensors(folder, add)

    subset = _subset(reference_dir, tmp_path / "switched", ["panoptic"], add_second_vocabulary)
    rows = run_parity(subset, tokenizer)
    assert all(row.ok for row in rows), format_table([row for row in rows if not row.ok])
    second = {row.tensor for row in rows if row.tensor.startswith("vocab2_")}
    assert second == {f"vocab2_{name}" for name in VOCABULARY_DEPENDENT}


def test_unresolvable_vocabulary_fails_loudly(
    reference_dir: Path, tmp_path: Path, tokenizer: ClipTokenizer
) -> None:
    def add_outputs(directory: Path) -> None:
        _edit_tensors(
            directory / "panoptic", lambda tensors: tensors.update(other_pred_logits=tensors["pred_logits"])
        )

    rows = run_parity(_subset(reference_dir, tmp_path / "unresolved", ["panoptic"], add_outputs), tokenizer)
    failed = [row for row in rows if not row.ok]
    assert [row.tensor for row in failed] == ["other_pred_logits"]
    assert "no vocabulary found" in failed[0].note and "other_pred_logits" in failed[0].note


def _edit_case(folder: Path, change: Callable[[dict], None]) -> None:
    case = json.loads((folder / "case.json").read_text())
    change(case)
    (folder / "case.json").write_text(json.dumps(case))


def _cross_checks(rows: list[ParityRow], name: str) -> list[ParityRow]:
    return [row for row in rows if row.tensor.startswith(f"{name} <- ") and row.tolerance == CROSS_CHECK]


def test_referring_mask_given_as_an_image_file(
    reference_dir: Path, tmp_path: Path, tokenizer: ClipTokenizer
) -> None:
    """mask_source may name an image file (here the set's mask on image A) instead of giving strokes."""

    def name_the_file(directory: Path) -> None:
        _edit_case(directory / "refimg", lambda case: case.update(mask_source="refimg_mask_image_a.png"))

    rows = run_parity(_subset(reference_dir, tmp_path / "file", ["refimg"], name_the_file), tokenizer)
    _assert_all_ok(rows, tmp_path / "file")
    (check,) = _cross_checks(rows, "refimg_mask")
    assert "refimg_mask_image_a.png" in check.tensor and check.note == "equal to the stored input"
    given = {row.tensor: row.note for row in rows if row.tolerance == "input"}
    assert given["image_b_uint8_chw"] == "input, used as stored (the case describes no other source)"


def test_stored_polygon_mask_one_pixel_off_is_reported_not_failed(
    reference_dir: Path, tmp_path: Path, tokenizer: ClipTokenizer
) -> None:
    """A ground truth drawn by another OpenCV version (one boundary pixel moved): the stored mask is the
    input; the re-filled polygon is an informational row that reports the pixel."""

    def move_a_boundary_pixel(directory: Path) -> None:
        def flip(tensors: dict[str, torch.Tensor]) -> None:
            mask = tensors["gt_mask_original_res"]
            row, column = (int(value) for value in mask[0].nonzero()[0])  # the first pixel: on the border
            mask[0, row, column] = 0

        _edit_tensors(directory / "interactive_official_loop", flip)

    subset = _subset(reference_dir, tmp_path / "pixel", ["interactive_official_loop"], move_a_boundary_pixel)
    rows = run_parity(subset, tokenizer)
    _assert_all_ok(rows, subset)
    (check,) = _cross_checks(rows, "gt_mask_original_res")
    assert check.ok and check.max_abs_error == 1.0 and check.note.startswith("1 elements differ")


def test_inputs_given_only_as_stored_tensors(
    reference_dir: Path, tmp_path: Path, tokenizer: ClipTokenizer
) -> None:
    """A spatial case that does not describe its prompt shapes: the stored prompt masks are its inputs,
    reported as given. Then one whose click is described a pixel off: reported, not failed."""

    def drop_descriptions(directory: Path) -> None:
        _edit_case(directory / "spatial_click", lambda case: case.pop("prompt_shapes_original_res"))

    rows = run_parity(
        _subset(reference_dir, tmp_path / "bare", ["spatial_click"], drop_descriptions), tokenizer
    )
    _assert_all_ok(rows, tmp_path / "bare")
    given = {row.tensor: row.note for row in rows if row.tolerance == "input"}
    for name in ("prompt_pos_mask", "prompt_neg_mask"):
        assert given[name] == "input, used as stored (the case describes no other source)"
    assert not [row for row in rows if row.tolerance == CROSS_CHECK]

    def shift_the_click(directory: Path) -> None:
        def shift(case: dict) -> None:
            case["prompt_shapes_original_res"]["positive"][0][0]["x"] += 1

        _edit_case(directory / "spatial_click", shift)

    rows = run_parity(
        _subset(reference_dir, tmp_path / "shifted", ["spatial_click"], shift_the_click), tokenizer
    )
    _assert_all_ok(rows, tmp_path / "shifted")
    (check,) = _cross_checks(rows, "prompt_pos_mask")
    assert check.ok and check.note.endswith("the stored tensor is the input")


@pytest.mark.parametrize(
    ("index_text", "reason"),
    [("{}", "lacks the entry 'model_file'"), ("not json", "cannot be read")],
)
def test_cli_says_what_is_wrong_with_a_malformed_reference_set(
    tmp_path: Path, capsys, index_text: str, reason: str
) -> None:
    (tmp_path / "index.json").write_text(index_text)
    assert main(["parity", str(tmp_path)]) == 1
    assert reason in capsys.readouterr().err
