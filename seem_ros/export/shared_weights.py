"""Weights stored once by content beside the graphs that use them, and mapped once per process.

SEEM's decoder is exported as one graph per prompt combination (generic, grounding, spatial, ...), each
holding the same weights. Stored inside every file and loaded by every ONNX Runtime session (each of which
also pre-packed its own copy of every matrix), a node serving panoptic frames, clicks and text held four
copies of the decoder's weights (148 MB each for Focal-T).

`store_by_content` moves every initializer of at least `MIN_SHARED_BYTES` out of a graph file into
`<graph folder>/weights/<key>.bin`, where key hashes its element type, shape and bytes, and renames it to
that key: graphs with the same weights name the same files, and a file is never written twice. The list of
a graph's weight files (names, element types, shapes) is written beside them as
`weights/graph-<hash of the graph file>.json`, so loading needs no ONNX parser (importing the `onnx`
package alone took 1.5 s of a warm start). `SharedInitializers` memory-maps each weight file once per
process and gives every session that uses it the same read-only ONNX Runtime value
(`SessionOptions.add_initializer`); sessions built this way must not pre-pack (`SHARED_SESSION_CONFIG`),
else each keeps a packed copy of its own.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from seem_ros.cache import write_atomically

if TYPE_CHECKING:
    import onnx
    import onnxruntime

WEIGHTS_FOLDER = "weights"
"""Folder, beside the graph files, of the weight files named by content."""
MIN_SHARED_BYTES = 4096
"""Initializers smaller than this stay inside the graph (shapes, indices, scalars)."""
SHARED_SESSION_CONFIG = {"session.disable_prepacking": "1"}
"""Session config entries for sessions given shared initializers: pre-packing would copy each weight."""


def content_key(data_type: int, dims: tuple[int, ...], raw: bytes) -> str:
    """Name of a tensor by its content: 32 hex digits of a hash of element type, shape and bytes."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{data_type}:{dims};".encode())
    digest.update(raw)
    return digest.hexdigest()


def graph_index_path(graph_path: Path, graph_bytes: bytes) -> Path:
    """Where the list of a graph's weight files is: named by a hash of the graph file's bytes."""
    return (
        graph_path.parent
        / WEIGHTS_FOLDER
        / f"graph-{hashlib.blake2b(graph_bytes, digest_size=16).hexdigest()}.json"
    )


def store_by_content(path: str | Path, min_bytes: int = MIN_SHARED_BYTES) -> int:
    """Rewrite the ONNX file `path` so that each initializer of at least min_bytes (held as raw data) is
    ONNX external data in `<folder of path>/weights/<key>.bin`, named `<key>` in the graph (uses renamed;
    initializers of equal content merged into one), and writes the graph's index of weight files. Each file
    is written once, atomically. Returns the number of initializers stored outside."""
    import onnx
    from onnx.external_data_helper import set_external_data

    path = Path(path)
    proto = onnx.load(str(path))
    folder = path.parent / WEIGHTS_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    renamed: dict[str, str] = {}
    kept: list[onnx.TensorProto] = []
    stored: dict[str, dict] = {}
    for tensor in proto.graph.initializer:
        raw = tensor.raw_data
        if len(raw) < min_bytes:
            kept.append(tensor)
            continue
        key = content_key(tensor.data_type, tuple(tensor.dims), raw)
        renamed[tensor.name] = key
        if key in stored:
            continue
        stored[key] = {
            "file": f"{key}.bin",
            "dtype": onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).str,
            "shape": list(tensor.dims),
        }
        _write_once(folder / f"{key}.bin", raw)
        tensor.name = key
        set_external_data(tensor, f"{WEIGHTS_FOLDER}/{key}.bin", offset=0, length=len(raw))
        tensor.ClearField("raw_data")
        tensor.data_location = onnx.TensorProto.EXTERNAL
        kept.append(tensor)
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(kept)
    _rename_uses(proto.graph, renamed)
    graph_bytes = proto.SerializeToString()
    _write_once(graph_index_path(path, graph_bytes), json.dumps(stored, indent=0).encode())
    path.write_bytes(graph_bytes)
    return len(renamed)


def _write_once(path: Path, data: bytes) -> None:
    """Write `data` to `path` unless it exists (same name, same content), under a temporary name first."""
    if not (path.is_file() and path.stat().st_size == len(data)):
        write_atomically(path, lambda temporary: Path(temporary).write_bytes(data))


def _rename_uses(graph: onnx.GraphProto, renamed: dict[str, str]) -> None:
    """Rename the uses of initializers in `graph`'s nodes, inputs and outputs, and in its subgraphs."""
    import onnx

    for node in graph.node:
        node.input[:] = [renamed.get(name, name) for name in node.input]
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                _rename_uses(attribute.g, renamed)
            for subgraph in attribute.graphs:
                _rename_uses(subgraph, renamed)
    for value in (*graph.input, *graph.output):
        value.name = renamed.get(value.name, value.name)


class SharedInitializers:
    """The weight files of graphs written by `store_by_content`, each memory-mapped once and shared, read
    only, by every session `add_to` is given the options of. Keep this object for as long as those sessions
    live: ONNX Runtime reads the mapped memory without holding it."""

    def __init__(self) -> None:
        self._arrays: dict[Path, np.ndarray] = {}
        self._values: dict[Path, onnxruntime.OrtValue] = {}

    @property
    def nbytes(self) -> int:
        """Bytes of weights mapped (each file once)."""
        return sum(array.nbytes for array in self._arrays.values())

    def add_to(self, options: onnxruntime.SessionOptions, graph_path: str | Path) -> int:
        """Give the session options `options` every initializer of the graph file that lives in a weight
        file, and the config that stops pre-packing. Returns how many. Raises FileNotFoundError naming a
        missing index or weight file."""
        graph_path = Path(graph_path)
        index_path = graph_index_path(graph_path, graph_path.read_bytes())
        if not index_path.is_file():
            raise FileNotFoundError(
                f"the weight index {index_path} of {graph_path} is missing; "
                "delete that graph to export it again"
            )
        index = json.loads(index_path.read_text())
        for name, entry in index.items():
            value = self._value(
                graph_path, index_path.parent / entry["file"], np.dtype(entry["dtype"]), tuple(entry["shape"])
            )
            options.add_initializer(name, value)
        for key, entry in SHARED_SESSION_CONFIG.items():
            options.add_session_config_entry(key, entry)
        return len(index)

    def _value(
        self, graph_path: Path, path: Path, dtype: np.dtype, shape: tuple[int, ...]
    ) -> onnxruntime.OrtValue:
        import onnxruntime

        value = self._values.get(path)
        if value is None:
            if not path.is_file():
                raise FileNotFoundError(
                    f"weight file {path} of {graph_path} is missing; delete that graph to export it again"
                )
            array = np.memmap(path, dtype=dtype, mode="r", shape=shape)
            value = onnxruntime.OrtValue.ortvalue_from_numpy(array)
            self._arrays[path] = array
            self._values[path] = value
        return value
