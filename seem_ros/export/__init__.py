"""ONNX export of the SEEM model: graphs traced from `seem_ros.model` and checked against it in ONNX Runtime.

- `onnx_file`: writing a traced module to an ONNX file and comparing ONNX Runtime with PyTorch;
- `image_encoder`: backbone + pixel decoder, one graph with a dynamic input size (Focal) or a fixed one;
- `decoder`: the SEEM decoder, one graph per prompt configuration;
- `winograd`: Winograd F(4x4, 3x3) convolutions and the Winograd form of the pixel decoder, the image
  encoder's fast path.

The model never imports this package; the engine's ONNX backends use it to export into their cache.
"""
