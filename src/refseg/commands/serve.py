"""``refseg serve``: the web service and browser page (see :mod:`refseg.serve`).

The system (``--system``, default global-local) is loaded once, before the server starts,
so a bad ``--clip`` or a missing download ends the command with one line instead of a
server that cannot answer.
"""

from __future__ import annotations

import argparse
import logging
import socket
from dataclasses import replace
from typing import TYPE_CHECKING

from refseg.commands.options import (
    add_model_options,
    apply_runtime_options,
    check_device,
    check_max_pixels,
    load_system,
)
from refseg.errors import InputError

if TYPE_CHECKING:
    from refseg.serve.app import ServeSettings

log = logging.getLogger("refseg.serve")

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "serve",
        help="run the web service and browser page",
        description="Serve POST /segment, GET /health and a browser page at / with one shared "
        "model. Offline demo: refseg serve --clip shapes-vit",
        epilog="""examples:
  refseg serve --clip shapes-vit --proposals superpixel     # offline demo
  refseg serve --host 0.0.0.0 --port 9000 --proposals sam   # reachable from other hosts
  curl -F image=@photo.jpg -F text="the dog" -F alpha=0.5 localhost:8000/segment
""",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on")
    add_model_options(parser, method_help="default segmentation method", hyper_parameters=False)
    parser.add_argument("--max-upload-mb", type=float, help="largest upload (default 20 MiB)")
    parser.add_argument("--max-texts", type=int, help="expressions per request (default 16)")
    parser.add_argument("--timeout", type=float, help="seconds per request, else 504 (default 60)")
    parser.add_argument("--cache-size", type=int, help="images whose features are kept (default 8)")
    parser.add_argument(
        "--cache-mb", type=float, help="memory those images may hold together (default 512 MiB)"
    )
    parser.add_argument(
        "--allow-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="also accept requests from pages at ORIGIN (e.g. https://app.example; repeat; "
        "'*' for any). Default: only the server's own page, addressed by the --host name",
    )
    parser.add_argument(
        "--log-level",
        default="info",
        choices=("debug", "info", "warning", "error"),
        help="server log verbosity",
    )
    parser.set_defaults(func=run)
    return parser


def settings_from_args(args: argparse.Namespace) -> ServeSettings:
    """:class:`ServeSettings` with the options given; the dataclass defaults otherwise."""
    from refseg.serve.app import ServeSettings

    values = {
        "max_upload_bytes": None
        if args.max_upload_mb is None
        else int(args.max_upload_mb * 1024 * 1024),
        "max_texts": args.max_texts,
        "timeout_s": args.timeout,
        "cache_size": args.cache_size,
        "allowed_hosts": allowed_hosts(args.host, args.allow_origin),
        "allowed_origins": tuple(args.allow_origin),
        "cache_bytes": None if args.cache_mb is None else int(args.cache_mb * 1024 * 1024),
    }
    return replace(ServeSettings(), **{k: v for k, v in values.items() if v is not None})


def allowed_hosts(host: str, origins: list[str]) -> tuple[str, ...] | None:
    """Host names the server answers to: its bind address (every loopback name when that is
    loopback) and the hosts of ``--allow-origin``; ``None`` (any) for 0.0.0.0 or ``*``."""
    from refseg.serve.guards import allowed_host_names

    names = allowed_host_names(host, origins)
    return None if names is None else tuple(sorted(names))


def check_port(host: str, port: int) -> None:
    """Fail with one line if ``host:port`` cannot be bound (before loading any model)."""
    if not 0 <= port < 65536:
        raise InputError(f"--port must be in 0..65535 (0: any free port); got {port}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise InputError(f"cannot listen on {host!r}: {exc.strerror}") from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            raise InputError(
                f"cannot listen on {host}:{port} ({exc.strerror}): pick another --port"
            ) from None


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from refseg.serve.app import create_app
    from refseg.serve.service import describe_model

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = settings_from_args(args)
    check_device(args.device)
    check_max_pixels(args.max_pixels)
    apply_runtime_options(args)
    check_port(args.host, args.port)
    log.info("loading %s (CLIP %s) ...", args.system, args.clip or "default")
    segmenter = load_system(args)
    segmenter.warm_up()  # e.g. the parse pipeline now, not during the first request
    log.info("loaded %s", describe_model(segmenter))
    if args.host not in LOOPBACK:
        log.warning("listening on %s: anyone who can reach this address can use it", args.host)
    uvicorn.run(
        create_app(segmenter, settings),
        host=args.host,
        port=args.port,
        log_level=args.log_level,
    )
    return 0
