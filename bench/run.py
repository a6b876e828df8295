"""Benchmark the SEEM engine: per-stage times, peak memory, ONNX vs PyTorch, input size, tracked targets.

    python -m bench.run            # every preset, both backends (tens of minutes on a 2-core CPU)
    python -m bench.run --quick    # focalt_tiny + one Focal-T pass (about a minute)
    python -m bench.run --presets focalt_v1 --backends torch onnx --repeats 5 --json bench.json

Every (preset, backend) runs in its own process (`bench.worker`), so each peak RSS is its own. Models
have random weights. Each measurement discards `--warmup` runs and reports the median and p90 of
`--repeats` runs; on CUDA the device is synchronised before the clock is read. Sections:
- stages: preprocess, backbone, pixel decoder (PyTorch) or image encoder (ONNX), decoder and
  post-processing of the generic (panoptic) frame, of a text target, of a click target and of 1/4/8
  tracked targets, at `--short-side` (default 512) on a 512x683 image; peak RSS per process;
- sizes: encoder and generic decoder vs the input short side (first Focal preset);
- node: the ROS node's end-to-end latency (`bench.node`).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

from bench.backends import BACKENDS
from bench.node import run_node_section
from bench.startup import run_startup_section, startup_table
from bench.timing import PEAK_MEMORY_METHOD, markdown_table
from bench.worker import Job

ALL_PRESETS = ("focalt_tiny", "focalt_v1", "focall_v1", "samvitb_v1", "samvitl_v1")
SIZE_SWEEP = (256, 384, 480, 512, 640)
QUICK_SIZE_SWEEP = (256, 512)
SECTIONS = ("stages", "sizes", "post", "node", "startup")
STAGE_COLUMNS = (
    ("preprocess", "prep"),
    ("backbone", "backbone"),
    ("pixel_decoder", "pix.dec"),
    ("image_encoder", "ort enc"),
    ("encoder_total", "encoder"),
    ("generic_decoder", "dec gen"),
    ("generic_postprocess", "post gen"),
    ("frame_total", "frame"),
    ("text_decoder", "text"),
    ("click_decoder", "click"),
    ("tracks1_decoder", "trk1"),
    ("tracks4_decoder", "trk4"),
    ("tracks8_decoder", "trk8"),
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from seem_ros.cache import default_cache_dir

    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", choices=ALL_PRESETS, default=list(ALL_PRESETS))
    parser.add_argument("--backends", nargs="+", choices=list(BACKENDS), default=["torch", "onnx"])
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (>= 1)")
    parser.add_argument("--warmup", type=int, default=1, help="discarded runs before timing (>= 0)")
    parser.add_argument("--short-side", type=int, default=512, help="model input short side, pixels")
    parser.add_argument("--sizes", nargs="+", type=int, default=list(SIZE_SWEEP), help="short sides swept")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads per process")
    parser.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1")
    parser.add_argument(
        "--budget", type=float, default=600.0, help="seconds per process before repeats are cut"
    )
    parser.add_argument(
        "--timeout", type=float, default=1200.0, help="seconds after which a process is stopped (skipped)"
    )
    parser.add_argument("--cache-dir", type=Path, default=default_cache_dir() / "bench")
    parser.add_argument("--json", type=Path, help="write the results here (updated after every process)")
    parser.add_argument(
        "--from-json", type=Path, nargs="+", help="only print the report of earlier --json files (merged)"
    )
    parser.add_argument("--quick", action="store_true", help="focalt_tiny, then one Focal-T pass (~1 min)")
    parser.add_argument(
        "--startup-cache",
        type=Path,
        help="startup section: only warm starts, on this cache folder filled by an earlier start",
    )
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0 or args.threads < 1:
        parser.error("--repeats and --threads must be >= 1 and --warmup >= 0")
    return args


def machine_description(device: str) -> dict:
    """Where and with what the benchmark ran."""
    import numpy
    import onnxruntime
    import torch

    cpu = platform.processor()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [
            line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if "model name" in line
        ]
        cpu = names[0] if names else cpu
    description = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "device": device,
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "onnxruntime_providers": onnxruntime.get_available_providers(),
        "numpy": numpy.__version__,
        "peak_memory": PEAK_MEMORY_METHOD,
    }
    if device.startswith("cuda"):
        description["gpu"] = torch.cuda.get_device_name(torch.device(device))
    if hasattr(os, "getloadavg"):
        description["load_average_at_start"] = list(os.getloadavg())
    return description


def run_worker(job: Job, timeout: float) -> dict:
    """Run one job in a fresh interpreter; a failure or timeout becomes {"skipped": reason}."""
    command = [sys.executable, "-m", "bench.worker", json.dumps(asdict(job))]
    label = f"{job.preset}/{job.backend}/{job.task}"
    print(f"... {label}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    try:
        completed = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"job": asdict(job), "skipped": f"did not finish within {timeout:.0f} s on this machine"}
    if completed.returncode != 0:
        last_lines = " | ".join(completed.stderr.strip().splitlines()[-3:])
        return {"job": asdict(job), "skipped": f"failed (exit {completed.returncode}): {last_lines}"}
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    print(f"    done in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    return result


def size_sweep_preset(presets: list[str]) -> str | None:
    """focalt_v1 if measured, else the first Focal preset (SAM-ViT models always run at 1024 x 1024)."""
    focal = [preset for preset in presets if preset.startswith("focal")]
    return "focalt_v1" if "focalt_v1" in focal else (focal[0] if focal else None)


def plan(args: argparse.Namespace) -> list[Job]:
    """The jobs to run, in order (an ONNX export job before the ONNX measurements of a preset)."""
    base = Job(
        preset="",
        backend="torch",
        task="stages",
        short_sides=(args.short_side,),
        repeats=args.repeats,
        warmup=args.warmup,
        threads=args.threads,
        device=args.device,
        cache_dir=str(args.cache_dir),
        budget_s=args.budget,
    )
    presets = ["focalt_tiny"] if args.quick else args.presets
    jobs = []
    measured = {"stages", "sizes"} & set(args.sections)
    for preset in presets:
        if "onnx" in args.backends and measured:
            jobs.append(replace(base, preset=preset, backend="onnx", task="prepare"))
        if "stages" in args.sections:
            jobs += [replace(base, preset=preset, backend=backend) for backend in args.backends]
    if "post" in args.sections:
        jobs += [
            replace(base, preset=preset, backend=backend, task="post")
            for preset in presets
            for backend in args.backends
        ]
    sweep_preset = size_sweep_preset(presets)
    if "sizes" in args.sections and sweep_preset is not None:
        sides = QUICK_SIZE_SWEEP if args.quick else tuple(args.sizes)
        sweep = replace(base, preset=sweep_preset, task="sizes", short_sides=sides)
        jobs += [replace(sweep, backend=backend) for backend in args.backends]
    if args.quick and "stages" in args.sections:
        jobs.append(replace(base, preset="focalt_v1", repeats=1, encode_and_generic_only=True))
    return jobs


def _milliseconds(row: dict | None, key: str = "median_s") -> str:
    if row is None:
        return "-"
    if "skipped" in row:
        return "skip"
    return f"{1000 * row[key]:.0f}" if row[key] >= 0.1 else f"{1000 * row[key]:.1f}"


def job_table(results: list[dict], task: str, header: list[str], cells: Callable[[dict], list[str]]) -> str:
    """A markdown table with one line per job of `task`: cells(result) when it ran, else why it did not."""
    rows = []
    for result in results:
        job = result["job"]
        if job["task"] != task:
            continue
        if "skipped" in result:
            rows.append([job["preset"], job["backend"], f"skipped: {result['skipped']}"])
        else:
            rows.append(cells(result))
    return markdown_table(header, rows)


def stage_table(results: list[dict], key: str) -> str:
    """Markdown table of one statistic (median_s or p90_s) of the stages section, in milliseconds."""
    header = (
        ["preset", "backend", "input (padded)"] + [title for _, title in STAGE_COLUMNS] + ["peak RSS MiB"]
    )

    def cells(result: dict) -> list[str]:
        job = result["job"]
        rows = {row["stage"]: row for row in result["rows"]}
        first = next(row for row in result["rows"] if "input_size" in row)
        size = "x".join(map(str, first["input_size"])) + " (" + "x".join(map(str, first["padded_size"])) + ")"
        values = [_milliseconds(rows.get(stage), key) for stage, _ in STAGE_COLUMNS]
        return [job["preset"], job["backend"], size, *values, f"{result['peak_rss_bytes'] / 2**20:.0f}"]

    return job_table(results, "stages", header, cells)


def ratio_table(results: list[dict]) -> str:
    """ONNX Runtime / PyTorch eager time of the image encoder and of the whole generic frame."""
    by_key = {
        (result["job"]["preset"], result["job"]["backend"]): {row["stage"]: row for row in result["rows"]}
        for result in results
        if result["job"]["task"] == "stages" and "skipped" not in result
    }
    lines = ["| preset | encoder onnx/torch | frame onnx/torch | peak RSS onnx/torch |", "|---|---|---|---|"]
    memory = {
        (result["job"]["preset"], result["job"]["backend"]): result["peak_rss_bytes"]
        for result in results
        if result["job"]["task"] == "stages" and "skipped" not in result
    }
    for preset in dict.fromkeys(key[0] for key in by_key):
        if (preset, "torch") not in by_key or (preset, "onnx") not in by_key:
            continue
        torch_rows, onnx_rows = by_key[(preset, "torch")], by_key[(preset, "onnx")]
        encoder = onnx_rows["encoder_total"]["median_s"] / torch_rows["encoder_total"]["median_s"]
        frame = onnx_rows["frame_total"]["median_s"] / torch_rows["frame_total"]["median_s"]
        rss = memory[(preset, "onnx")] / memory[(preset, "torch")]
        lines.append(f"| {preset} | {encoder:.2f} | {frame:.2f} | {rss:.2f} |")
    return "\n".join(lines)


def size_table(results: list[dict]) -> str:
    """Encoder / generic decoder / frame medians (ms) against the input short side."""
    lines = [
        "| preset | backend | short side | input (padded) | encoder | dec gen | post gen | frame |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for result in results:
        job = result["job"]
        if job["task"] != "sizes":
            continue
        if "skipped" in result:
            lines.append(f"| {job['preset']} | {job['backend']} | skipped: {result['skipped']} |")
            continue
        by_side: dict[int, dict[str, dict]] = {}
        for row in result["rows"]:
            by_side.setdefault(row["short_side"], {})[row["stage"]] = row
        for side, rows in by_side.items():
            first = rows["frame_total"]
            size = (
                "x".join(map(str, first["input_size"]))
                + " ("
                + "x".join(map(str, first["padded_size"]))
                + ")"
            )
            cells = [job["preset"], job["backend"], str(side), size]
            cells += [
                _milliseconds(rows.get(stage))
                for stage in ("encoder_total", "generic_decoder", "generic_postprocess", "frame_total")
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


POST_COLUMNS = (
    ("post_generic", "panoptic post"),
    ("post_results", "results"),
    ("msg_instances", "instances msg"),
    ("msg_panoptic", "panoptic img"),
    ("msg_semantic", "semantic img"),
    ("msg_overlay", "overlay img"),
    ("post_and_messages", "post + messages"),
    ("frame_total", "frame"),
)


def post_table(results: list[dict]) -> str:
    """Post-processing and message conversion under forced panoptic segments (medians, ms), and their share
    of the frame."""
    header = ["preset", "backend", "segments"] + [title for _, title in POST_COLUMNS] + ["share of frame"]

    def cells(result: dict) -> list[str]:
        job = result["job"]
        rows = {row["stage"]: row for row in result["rows"]}
        share = rows["post_and_messages"]["median_s"] / rows["frame_total"]["median_s"]
        values = [_milliseconds(rows.get(stage)) for stage, _ in POST_COLUMNS]
        return [
            job["preset"],
            job["backend"],
            str(result["rows"][0]["segments"]),
            *values,
            f"{100 * share:.1f} %",
        ]

    return job_table(results, "post", header, cells)


def setup_table(results: list[dict]) -> str:
    """Build, vocabulary and ONNX export times, the export check and each process's peak RSS."""
    lines = [
        "| preset | backend | task | build s | vocabulary s | export s | export max abs diff "
        "| peak RSS MiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for result in results:
        job = result["job"]
        if "skipped" in result:
            lines.append(
                f"| {job['preset']} | {job['backend']} | {job['task']} | skipped: {result['skipped']} |"
            )
            continue
        diffs = [max(check["max_abs_diff"].values()) for check in result["export_checks"]]
        diff = f"{max(diffs):.1e}" if diffs else "-"
        lines.append(
            f"| {job['preset']} | {job['backend']} | {job['task']} | {result['build_s']:.1f} | "
            f"{result['vocabulary_s']:.1f} | {result['export_s']:.1f} | {diff} | "
            f"{result['peak_rss_bytes'] / 2**20:.0f} |"
        )
    return "\n".join(lines)


def model_alone_frames(results: list[dict]) -> dict[tuple[str, str], float]:
    """Median seconds of a whole frame (set_image + generic predict) of the model alone, by (preset,
    backend), from the stages section."""
    return {
        (result["job"]["preset"], result["job"]["backend"]): row["median_s"]
        for result in results
        if result["job"]["task"] == "stages" and "skipped" not in result
        for row in result["rows"]
        if row["stage"] == "frame_total"
    }


def node_table(rows: list[dict], model_alone: dict[tuple[str, str], float]) -> str:
    """The node section as a table: one line per preset, backend and stage; end-to-end rows also compare
    with the model alone (`model_alone_frames`) where the stages section measured it."""
    lines = ["| preset | backend | stage | median ms | p90 ms | n | notes |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        if "skipped" in row:
            lines.append(
                f"| {row.get('preset', '-')} | {row.get('backend', '-')} | skipped | | | | {row['skipped']} |"
            )
            continue
        notes = []
        alone = model_alone.get((row["preset"], row["backend"]))
        if row["stage"] == "node e2e" and alone is not None:
            notes.append(f"{row['median_s'] / alone:.2f}x the model alone ({1e3 * alone:.0f} ms, stages)")
        if "speedup_vs_torch" in row:
            notes.append(f"{row['speedup_vs_torch']:.2f}x faster than torch, frames interleaved")
        if "overhead_fraction_of_model" in row:
            notes.append(f"{100 * row['overhead_fraction_of_model']:.1f} % of model time")
        if "output_hz" in row:
            notes.append(
                f"{row['frames_sent']} frames sent, {row['frames_answered']} answered, "
                f"{row['output_hz']:.2f} Hz out"
            )
        lines.append(
            f"| {row['preset']} | {row['backend']} | {row['stage']} | {1e3 * row['median_s']:.1f} | "
            f"{1e3 * row['p90_s']:.1f} | {row['repeats']} | {'; '.join(notes)} |"
        )
    return "\n".join(lines)


def report(machine: dict, results: list[dict], node_rows: list[dict], startup_rows: list[dict]) -> str:
    """The printed report: machine, then one markdown table per section."""
    parts = [
        f"# bench.run, {machine['date']}",
        f"device {machine['device']}; CPU {machine['cpu']} x{machine['cpu_count']}; "
        f"torch {machine['torch']}; onnxruntime {machine['onnxruntime']}",
        f"peak memory: {machine['peak_memory']}",
        "\n## Stages, median ms\n\n" + stage_table(results, "median_s"),
        "\n## Stages, p90 ms\n\n" + stage_table(results, "p90_s"),
        "\n## ONNX Runtime vs PyTorch eager (same run)\n\n" + ratio_table(results),
        "\n## Input size, median ms\n\n" + size_table(results),
        "\n## Post-processing under forced panoptic segments, median ms\n\n" + post_table(results),
        "\n## Set-up\n\n" + setup_table(results),
    ]
    if node_rows:
        parts.append(
            "\n## Node end to end vs model in node (same run)\n\n"
            + node_table(node_rows, model_alone_frames(results))
        )
    if startup_rows:
        parts.append("\n## Start-up of seem_node, seconds\n\n" + startup_table(startup_rows))
    return "\n".join(parts)


def portable_path(path: str | Path) -> str:
    """A path as the results JSON records it, free of this machine's directories: `~/...` under the home
    directory, relative under the current directory, else only its name."""
    absolute = Path(path).expanduser().absolute()
    for base, prefix in ((Path.cwd(), ""), (Path.home(), "~/")):
        if absolute.is_relative_to(base):
            return prefix + str(absolute.relative_to(base))
    return absolute.name


def _portable_value(value: object) -> object:
    if isinstance(value, Path):
        return portable_path(value)
    if isinstance(value, list):
        return [_portable_value(item) for item in value]
    return value


def write_json(
    path: Path,
    machine: dict,
    args: argparse.Namespace,
    results: list[dict],
    node: list[dict],
    startup: list[dict],
) -> None:
    """The results document; paths (arguments, each job's cache_dir) as `portable_path` writes them."""
    arguments = {name: _portable_value(value) for name, value in vars(args).items()}
    results = [
        {**result, "job": {**result["job"], "cache_dir": portable_path(result["job"]["cache_dir"])}}
        for result in results
    ]
    document = {
        "machine": machine,
        "arguments": arguments,
        "results": results,
        "node": node,
        "startup": startup,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=1))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.from_json:
        documents = [json.loads(path.read_text()) for path in args.from_json]
        results = [result for document in documents for result in document["results"]]
        node_rows = [row for document in documents for row in document["node"]]
        startup_rows = [row for document in documents for row in document.get("startup", [])]
        print(report(documents[0]["machine"], results, node_rows, startup_rows))
        return
    machine = machine_description(args.device)
    results: list[dict] = []
    for job in plan(args):
        results.append(run_worker(job, args.timeout))
        if args.json is not None:
            write_json(args.json, machine, args, results, [], [])
    node_rows = run_node_section(args) if "node" in args.sections else []
    startup_rows = run_startup_section(args) if "startup" in args.sections else []
    if hasattr(os, "getloadavg"):
        machine["load_average_at_end"] = list(os.getloadavg())
    print(report(machine, results, node_rows, startup_rows))
    if args.json is not None:
        write_json(args.json, machine, args, results, node_rows, startup_rows)


if __name__ == "__main__":
    main()
