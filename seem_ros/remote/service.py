"""The SEEM engine as a Ray Serve application: one deployment whose replicas each hold a model.

Requests are HTTP POSTs of the wire format (`seem_ros.remote.wire`) to the application's route (``/seem``
by default). Each replica checks the bearer token (when one is set) and the declared body size before
reading a request, then queues it for `@serve.batch`, which hands a replica the requests that arrived
together (up to `max_batch_size`, waiting at most `batch_wait_timeout_s` for more): their frames go
through the image encoder in one batched pass per padded size (PyTorch backend; ONNX graphs take one frame
at a time), then each request's targets are decoded on its own frame.

`app_builder(args)` builds the application from plain settings, so Ray's own tools deploy it:
``serve run seem_ros.remote.service:app_builder preset=focalt_v1`` or a config file (config/serve.yaml)
for ``serve deploy``. The HTTP address (host, port) belongs to Serve's ``http_options``, localhost by
default.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ray import serve
from starlette.requests import Request
from starlette.responses import Response

from seem_ros.engine.api import SegmenterConfig
from seem_ros.remote.client import read_token
from seem_ros.remote.server_engine import ServerEngine, tokens_match
from seem_ros.remote.wire import CONTENT_TYPE, WireLimits, refusal


@dataclass
class ServiceSettings:
    """What a deployment is built from; every field can be given to `app_builder` as a string.

    engine: SegmenterConfig fields of each replica (preset, checkpoint, backend torch/onnx, device, ...).
    token: the shared token every request must carry ("" = none; the server refuses a non-local bind
    without one); read from $SEEM_ROS_SERVER_TOKEN when empty. threads: torch threads per replica.
    """

    engine: dict[str, Any] = field(default_factory=dict)
    num_replicas: int = 1
    min_replicas: int = 0
    max_replicas: int = 0
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    threads: int = 1
    max_batch_size: int = 8
    batch_wait_timeout_s: float = 0.005
    token: str = ""
    max_request_bytes: int = 32 << 20


@serve.deployment(name="seem", health_check_period_s=2.0, health_check_timeout_s=30.0)
class SeemDeployment:
    """One replica: a `ServerEngine` behind Serve's HTTP proxy."""

    def __init__(self, settings: dict[str, Any]) -> None:
        import torch

        self.settings = ServiceSettings(**settings)
        torch.set_num_threads(self.settings.threads)
        config = SegmenterConfig(**_engine_fields(self.settings.engine))
        limits = WireLimits(
            max_request_bytes=self.settings.max_request_bytes, max_image_pixels=config.max_image_pixels
        )
        self.token = self.settings.token or read_token()
        replica = f"{serve.get_replica_context().replica_id.unique_id} pid {os.getpid()}"
        self.engine = ServerEngine(config, limits, replica=replica)
        self._infer_batch.set_max_batch_size(self.settings.max_batch_size)
        self._infer_batch.set_batch_wait_timeout_s(self.settings.batch_wait_timeout_s)

    async def __call__(self, request: Request) -> Response:
        if not tokens_match(self.token, request.headers.get("authorization")):
            return _error("a valid bearer token is required (Authorization: Bearer <token>)", "unauthorized")
        declared = request.headers.get("content-length", "")
        limit = self.engine.limits.max_request_bytes
        if not declared.isdigit() or int(declared) > limit:
            return _error(f"requests must declare a Content-Length of at most {limit} bytes", "too_large")
        body = await request.body()
        status, reply = await self._infer_batch(body)
        return Response(reply, status_code=status, media_type=CONTENT_TYPE)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005)
    async def _infer_batch(self, bodies: list[bytes]) -> list[tuple[int, bytes]]:
        return self.engine.handle_batch(bodies)


def _error(message: str, code: str) -> Response:
    status, body = refusal(message, code)
    return Response(body, status_code=status, media_type=CONTENT_TYPE)


def _engine_fields(engine: dict[str, Any]) -> dict[str, Any]:
    """SegmenterConfig keyword arguments from plain values (lists become tuples)."""
    known = {item.name for item in fields(SegmenterConfig)}
    unknown = sorted(set(engine) - known)
    if unknown:
        raise ValueError(f"unknown engine settings {unknown}; known: {sorted(known)}")
    return {key: tuple(value) if isinstance(value, list) else value for key, value in engine.items()}


def build_application(settings: ServiceSettings) -> serve.Application:
    """The Serve application of `settings` (replicas fixed, or autoscaled when max_replicas is set)."""
    SegmenterConfig(**_engine_fields(settings.engine))  # a bad setting fails here, not in every replica
    options: dict[str, Any] = {
        "ray_actor_options": {"num_cpus": settings.num_cpus, "num_gpus": settings.num_gpus},
        "max_ongoing_requests": max(2 * settings.max_batch_size, 4),
    }
    if settings.max_replicas:
        options["autoscaling_config"] = {
            "min_replicas": settings.min_replicas,
            "max_replicas": settings.max_replicas,
            "target_ongoing_requests": settings.max_batch_size,
        }
    else:
        options["num_replicas"] = settings.num_replicas
    return SeemDeployment.options(**options).bind(asdict(settings))


def app_builder(args: dict[str, Any]) -> serve.Application:
    """For ``serve run`` / ``serve deploy``: ServiceSettings fields, plus engine fields at the top level
    (``preset=focalt_v1 backend=onnx``) or under ``engine``."""
    known = {item.name for item in fields(ServiceSettings)}
    engine = dict(args.get("engine", {}))
    service: dict[str, Any] = {}
    for key, value in args.items():
        if key == "engine":
            continue
        (service if key in known else engine)[key] = value
    service_defaults = ServiceSettings()
    for name in service:
        service[name] = type(getattr(service_defaults, name))(service[name])
    engine_defaults = SegmenterConfig()
    engine_types = {item.name: type(getattr(engine_defaults, item.name)) for item in fields(SegmenterConfig)}
    for key, value in list(engine.items()):
        kind = engine_types.get(key)
        if kind is bool and isinstance(value, str):
            engine[key] = value.lower() in ("1", "true", "yes", "on")
        elif kind is tuple and isinstance(value, str):
            engine[key] = tuple(name.strip() for name in value.split(",") if name.strip())
        elif kind in (int, float) and isinstance(value, str):
            engine[key] = kind(value)
    return build_application(ServiceSettings(engine=engine, **service))
