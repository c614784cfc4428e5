"""`omni-edge serve`: load a model and serve it over OpenAI's API with uvicorn."""

import ipaddress
import os

from .limits import DEFAULT_MAX_BODY_MB, DEFAULT_MAX_QUEUE, DEFAULT_TIME_LIMIT_S

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
API_KEY_ENV = "OMNI_EDGE_API_KEY"


def add_parser(subparsers):
    p = subparsers.add_parser("serve", help="serve the model over an OpenAI-compatible HTTP API")
    p.add_argument("--model", required=True, help="converted dir, HF dir or hub repo id")
    p.add_argument("--low-memory", action="store_true",
                   help="free the audio and vision encoders' weights after each use (a lower "
                        "peak; read again for each request with media)")
    p.add_argument("--model-name", help="the model id /v1/models lists (default: the folder name)")
    p.add_argument("--host", default=DEFAULT_HOST,
                   help="address to listen on (loopback by default; any other needs --api-key)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.add_argument("--api-key", default=os.environ.get(API_KEY_ENV),
                   help=f"require 'Authorization: Bearer KEY' (default ${API_KEY_ENV})")
    p.add_argument("--max-queue", type=int, default=DEFAULT_MAX_QUEUE,
                   help="requests that may wait behind the running one; more get 429")
    p.add_argument("--time-limit", type=float, default=DEFAULT_TIME_LIMIT_S,
                   help="seconds one request may generate for")
    p.add_argument("--max-body-mb", type=float, default=DEFAULT_MAX_BODY_MB,
                   help="largest request body in MB; larger gets 413")
    p.add_argument("--allow-local-files", action="store_true",
                   help="let requests name image and video files on this machine")
    p.set_defaults(func=run_serve)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run_serve(args):
    try:
        import uvicorn

        from .app import create_app
    except ImportError as err:
        raise ValueError(f"the server needs its extra ({err.name} is missing): "
                         'pip install "omni-edge[server]"') from None
    from ..loading import load

    if not is_loopback(args.host) and not args.api_key:
        raise ValueError(f"--host {args.host} is reachable from other machines: set --api-key "
                         f"(or ${API_KEY_ENV}), or listen on {DEFAULT_HOST}")
    if args.max_queue < 0:
        raise ValueError(f"--max-queue must be >= 0, got {args.max_queue}")
    model = load(args.model, keep_encoders=not args.low_memory)
    name = args.model_name or os.path.basename(os.path.normpath(args.model))
    app = create_app(model, name, max_queue=args.max_queue, time_limit=args.time_limit,
                     max_body_mb=args.max_body_mb, allow_local_files=args.allow_local_files,
                     api_key=args.api_key)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
