"""`seem-ros serve`: start (or join) a Ray cluster and deploy the SEEM application on it.

The HTTP ingress binds to 127.0.0.1 unless `--host` says otherwise; any other host needs a shared token
(`--token-file` or $SEEM_ROS_SERVER_TOKEN), which every request must then carry. The command runs until
interrupted (SIGINT or SIGTERM), then deletes the application and, when it started the cluster, stops it.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from seem_ros.remote.client import read_token

if TYPE_CHECKING:
    from seem_ros.remote.service import ServiceSettings

DEFAULT_ROUTE = "/seem"
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", default="", help="join this Ray cluster (e.g. ray://host:10001 or auto)")
    parser.add_argument("--host", default="127.0.0.1", help="HTTP bind address (default: localhost only)")
    parser.add_argument("--port", type=int, default=8000, help="HTTP port")
    parser.add_argument("--route", default=DEFAULT_ROUTE, help="URL path of the application")
    parser.add_argument(
        "--token-file", default="", help="file holding the shared token ($SEEM_ROS_SERVER_TOKEN)"
    )
    parser.add_argument("--preset", default="focalt_v1")
    parser.add_argument("--checkpoint", default="")
    parser.add_argument("--random-weights", action="store_true", help="seeded random weights (tests)")
    parser.add_argument("--backend", default="torch", choices=("torch", "onnx"))
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--vocabulary", default="", help="comma-separated class names (default: the preset's)"
    )
    parser.add_argument("--replicas", type=int, default=1, help="fixed number of replicas")
    parser.add_argument(
        "--max-replicas", type=int, default=0, help="autoscale between --min-replicas and this"
    )
    parser.add_argument("--min-replicas", type=int, default=1)
    parser.add_argument("--num-cpus", type=float, default=1.0, help="CPUs reserved per replica")
    parser.add_argument(
        "--num-gpus", type=float, default=0.0, help="GPUs per replica (e.g. 1, or 0.5 to share)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads per replica")
    parser.add_argument("--max-batch-size", type=int, default=8, help="@serve.batch size (1 = no batching)")
    parser.add_argument(
        "--batch-wait", type=float, default=0.005, help="seconds a batch waits for more requests"
    )
    parser.add_argument(
        "--cluster-cpus", type=int, default=0, help="CPUs of a cluster started here (0 = all)"
    )
    parser.add_argument("--temp-dir", default="", help="Ray's session folder for a cluster started here")


def settings_from_arguments(args: argparse.Namespace, token: str) -> ServiceSettings:
    from seem_ros.remote.service import ServiceSettings

    engine: dict = {"preset": args.preset, "backend": args.backend, "device": args.device}
    if args.checkpoint:
        engine["checkpoint"] = args.checkpoint
    if args.random_weights:
        engine["random_weights"] = True
    if args.vocabulary:
        engine["vocabulary"] = tuple(name.strip() for name in args.vocabulary.split(",") if name.strip())
    return ServiceSettings(
        engine=engine,
        num_replicas=args.replicas,
        min_replicas=args.min_replicas,
        max_replicas=args.max_replicas,
        num_cpus=args.num_cpus,
        num_gpus=args.num_gpus,
        threads=args.threads,
        max_batch_size=args.max_batch_size,
        batch_wait_timeout_s=args.batch_wait,
        token=token,
    )


def run(args: argparse.Namespace) -> int:
    """Handler of `seem-ros serve`; returns the exit status."""
    token = read_token(args.token_file)
    if args.host not in LOCAL_HOSTS and not token:
        print(
            f"error: binding to {args.host} exposes the server beyond this machine; give a shared token "
            "(--token-file or $SEEM_ROS_SERVER_TOKEN) that clients must send",
            file=sys.stderr,
        )
        return 1
    from seem_ros.engine.segmenter import checkpoint_file
    from seem_ros.remote.service import build_application

    settings = settings_from_arguments(args, token)
    build_application(settings)  # bad settings are reported before a cluster starts
    if not 0 < args.port < 65536:
        raise ValueError(f"--port must be 1 to 65535, got {args.port}")
    if not args.address and not args.random_weights:  # the replicas run here: their checkpoint is here
        checkpoint_file(args.preset, args.checkpoint)

    import ray
    from ray import serve

    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    started_here = not args.address
    init: dict = {"include_dashboard": False, "logging_level": "WARNING"}
    if args.address:
        init["address"] = args.address
    else:
        if args.cluster_cpus:
            init["num_cpus"] = args.cluster_cpus
        if args.temp_dir:
            init["_temp_dir"] = str(Path(args.temp_dir).resolve())
    ray.init(**init)
    try:
        try:
            serve.start(http_options={"host": args.host, "port": args.port})
            serve.run(build_application(settings), name="seem", route_prefix=args.route)
        except RuntimeError as error:  # the port taken, a replica that cannot start: Ray says which
            print(f"error: {str(error).strip().splitlines()[0]}", file=sys.stderr)
            return 1
        url = f"http://{args.host}:{args.port}{args.route}"
        print(f"seem-ros serve: ready at {url} ({_describe(settings)})", flush=True)
        while not stop.wait(0.5):
            pass
        print("seem-ros serve: stopping", flush=True)
    finally:
        try:
            serve.shutdown()
        finally:
            if started_here:
                ray.shutdown()
    return 0


def _describe(settings: ServiceSettings) -> str:
    replicas = (
        f"{settings.min_replicas}-{settings.max_replicas} replicas (autoscaled)"
        if settings.max_replicas
        else f"{settings.num_replicas} replica(s)"
    )
    token = "token required" if settings.token else "no token"
    return f"{settings.engine.get('preset')} on {settings.engine.get('backend')}, {replicas}, {token}"
