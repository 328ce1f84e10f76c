"""`diffblocks serve`: the ComfyUI-compatible HTTP + WebSocket server (docs/server.md)."""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)


def _serve(args: argparse.Namespace) -> int:
    try:
        from aiohttp import web
    except ImportError as exc:
        raise RuntimeError("diffblocks serve needs aiohttp: pip install 'diffblocks[server]'") from exc

    from ..components.offload import parse_size
    from ..server.app import create_app
    from ..server.engine import PromptEngine
    from ..server.frontend import find_frontend

    models = Path(args.models)
    if not models.is_dir():
        raise FileNotFoundError(f"--models {models}: no such folder (it holds the checkpoints the nodes list)")
    cache = parse_size(args.cache_memory)
    temp = Path(args.temp) if args.temp else Path(tempfile.mkdtemp(prefix="diffblocks-temp-"))
    engine = PromptEngine(models_dir=models, input_dir=Path(args.input), output_dir=Path(args.output),
                          temp_dir=temp, cache_memory=cache)
    app = create_app(engine, models_dir=models, input_dir=args.input, output_dir=args.output, temp_dir=temp,
                     user_dir=args.user_dir, preview_method=args.preview_method)
    if args.listen not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("listening on %s: anyone who can reach this address can run prompts and read outputs",
                       args.listen)
    frontend = "the ComfyUI frontend" if find_frontend() else "no frontend (pip install 'diffblocks[ui]')"
    host = f"[{args.listen}]" if ":" in args.listen else args.listen
    print(f"diffblocks serve: http://{host}:{args.port}/ ({frontend}); models from {models}", flush=True)
    web.run_app(app, host=args.listen, port=args.port, print=None, access_log=None)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve the ComfyUI HTTP/WebSocket API (and its frontend) over diffblocks nodes")
    p.add_argument("--listen", default="127.0.0.1",
                   help="address to listen on (default: %(default)s, loopback only; 0.0.0.0 exposes the server)")
    p.add_argument("--port", type=int, default=8188, help="(default: %(default)s)")
    p.add_argument("--models", default="models", help="folder of checkpoints (diffusers folders and single files) "
                                                      "the loader nodes list (default: %(default)s)")
    p.add_argument("--output", default="output", help="where SaveImage writes (default: %(default)s)")
    p.add_argument("--input", default="input", help="uploads and LoadImage files (default: %(default)s)")
    p.add_argument("--temp", default=None, help="PreviewImage files (default: a new temporary folder)")
    p.add_argument("--user-dir", default="user", help="frontend settings and saved workflows (default: %(default)s)")
    p.add_argument("--cache-memory", default="4GB",
                   help="memory for the tensors of node outputs kept between prompts, e.g. 4GB; 0 keeps none (loaded "
                        "models are reused either way) (default: %(default)s)")
    p.add_argument("--preview-method", default="none", choices=["none", "auto", "latent2rgb"],
                   help="live previews while sampling: none unless a prompt asks (ComfyUI's default), or auto / "
                        "latent2rgb (the same: a latent-to-RGB projection) (default: %(default)s)")
    p.set_defaults(func=_serve)
