"""``wildvision serve``: the HTTP service (``[serve]`` extra). Stdlib-only at import time."""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from typing import Any

__all__ = ["register", "run_serve"]


def register(subparsers: Any) -> None:
    """Add the ``serve`` subcommand to the ``wildvision`` CLI."""
    p = subparsers.add_parser(
        "serve",
        help="run the HTTP classification service ([serve] extra)",
        description="Serve POST /v1/classify, POST /v1/classify/batch, GET /v1/models, "
                    "/healthz, /readyz and /openapi.json. Images are accepted in the request "
                    "body only; URLs are never fetched.",
    )
    p.add_argument("-m", "--model", default=None,
                   help="model name, package folder or hf://org/name (default: wildvision-base)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; 0.0.0.0 for all interfaces)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--workers", type=int, default=1,
                   help="server processes, each with its own model copy (default 1)")
    p.add_argument("--api-key-file", default=None, metavar="FILE",
                   help="require an API key from FILE (one per line): "
                        "'Authorization: Bearer KEY' or 'X-API-Key: KEY'")
    p.add_argument("--max-concurrency", type=int, default=2, metavar="N",
                   help="inferences at once per worker; more get 503 + Retry-After (default 2)")
    p.add_argument("--max-pending", type=int, default=None, metavar="N",
                   help="requests admitted at once per worker, bodies being read included "
                        "(default 4 x max-concurrency)")
    p.add_argument("--max-body-mb", type=float, default=16.0, metavar="MB",
                   help="largest request body in MiB (default 16); larger: 413")
    p.add_argument("--max-pixels", type=int, default=None, metavar="N",
                   help="largest image in pixels (default 40,000,000); larger: 422")
    p.add_argument("--max-batch-files", type=int, default=32, metavar="N",
                   help="most files per batch request (default 32)")
    p.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                   help="per-request time limit (default 30): 408 reading, 504 inferring")
    from ..options import add_classifier_arguments

    add_classifier_arguments(
        p, batch_size=16, batch_size_help="images per model run in batch requests (default 16)",
        threads_help="inference threads per worker (default: the runtime decides)")
    p.add_argument("--match-index", default=None, metavar="FILE",
                   help="known-photo index: results list their matches, a photo with one is "
                   "flagged ([match] extra)")
    p.add_argument("--no-access-log", action="store_true",
                   help="do not log one JSON line per request")
    p.set_defaults(func=run_serve)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def build_config(args: argparse.Namespace) -> Any:
    """The :class:`ServeConfig` for parsed ``serve`` arguments.

    Raises:
        ConfigError: invalid option values.
    """
    from dataclasses import fields

    from ..errors import ConfigError
    from ..imaging import DEFAULT_MAX_PIXELS
    from ..options import ClassifierOptions
    from ._config import ServeConfig

    if args.workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {args.workers}")
    if not 0 < args.port < 65536:
        raise ConfigError(f"--port must be in 1..65535, got {args.port}")
    if not args.max_body_mb > 0:
        raise ConfigError(f"--max-body-mb must be > 0, got {args.max_body_mb}")
    options = ClassifierOptions.from_args(args, max_pixels=args.max_pixels or DEFAULT_MAX_PIXELS)
    served = {f.name for f in fields(ServeConfig)} - {"match_index"}  # a path here
    return ServeConfig(
        model=args.model,
        **{k: v for k, v in options.to_dict().items() if k in served},
        max_body_bytes=int(args.max_body_mb * 1024 * 1024),
        max_batch_files=args.max_batch_files,
        max_concurrency=args.max_concurrency,
        max_pending=args.max_pending,
        request_timeout_s=args.timeout,
        api_key_file=os.path.abspath(args.api_key_file) if args.api_key_file else None,
        log_requests=not args.no_access_log,
        match_index=os.path.abspath(args.match_index) if args.match_index else None,
    )


def run_serve(args: argparse.Namespace) -> int:
    """Run the service until interrupted; returns the exit status."""
    import importlib.util

    from ..errors import MissingExtraError

    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError as e:
        raise MissingExtraError("fastapi, uvicorn and python-multipart", "serve",
                                "wildvision serve") from e
    if not any(importlib.util.find_spec(m) for m in ("python_multipart", "multipart")):
        raise MissingExtraError("fastapi, uvicorn and python-multipart", "serve",
                                "wildvision serve")
    from ..registry import load_model
    from ._app import configure_logging, create_app
    from ._config import CONFIG_ENV

    cfg = build_config(args)
    cfg.all_api_keys()  # fail now on a bad key file, not in every worker
    load_model(cfg.model)  # fail now on an unknown or corrupt model (exit 1)
    configure_logging()
    if not cfg.api_key_file and not _is_loopback(args.host):
        print(f"wildvision serve: warning: listening on {args.host} without --api-key-file; "
              "anyone who can reach this port can use the service", file=sys.stderr)
    common: dict[str, Any] = {
        "host": args.host, "port": args.port, "log_config": None, "access_log": False,
        "server_header": False, "timeout_graceful_shutdown": int(cfg.request_timeout_s) + 5,
        **cfg.uvicorn_options(),  # keep-alive, connection and header-size limits
    }
    if args.workers == 1:
        uvicorn.run(create_app(cfg), **common)
    else:
        os.environ[CONFIG_ENV] = cfg.to_json()
        uvicorn.run("wildvision.serve._app:create_app_from_env", factory=True,
                    workers=args.workers, **common)
    return 0
