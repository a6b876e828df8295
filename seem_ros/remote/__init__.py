"""Remote inference: the node as a thin client of a seem_ros server on Ray Serve.

- `wire`: the request/reply schema (MessagePack), checked before anything is decoded;
- `server_engine`: what a replica does with a request (no Ray);
- `service`: the Ray Serve deployment and `app_builder` for Ray's own tools;
- `server`: the `seem-ros serve` command;
- `client`: `RemotePredictor`, the predictor a node's segmenter uses with `backend: remote`.
"""
