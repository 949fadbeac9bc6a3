"""`edgeq serve`: an OpenAI-compatible HTTP server (Starlette on uvicorn, the `edgeq[server]` extra).

`--parallel N` opens the file N times: the weights are one memory map shared through the page
cache, each slot has its own KV cache and a worker thread (slots.py); the endpoints are in api.py.
Not here: several models per server, or batching several requests into one forward pass.
"""
from __future__ import annotations

import asyncio
import signal
import socket
import sys
import threading
import warnings

from ..errors import EdgeqError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
DEFAULT_PARALLEL = 1
DEFAULT_QUEUE = 8
INSTALL_HINT = "pip install 'edgeq[server]'"


def _require_server_packages() -> None:
    missing = []
    for name in ("starlette", "uvicorn"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise EdgeqError(f"edgeq serve needs {' and '.join(missing)}: {INSTALL_HINT}")


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket (port 0: a free one), so a taken port is a one-line error before loading."""
    if not 0 <= port <= 65535:
        raise EdgeqError(f"--port must be 0 to 65535, got {port}")
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except socket.gaierror as error:
        raise EdgeqError(f"--host {host}: {error.strerror}") from None
    try:
        return socket.create_server((host, port), family=family, backlog=128)
    except OSError as error:
        raise EdgeqError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None


def _memory_line(models, threads: int) -> str:
    from ..info import memory_estimate
    first = models[0]
    mem = memory_estimate(first.file, first.n_ctx, first.info["kv"], threads)
    per_slot = mem["kv_cache"] + mem["activations"]
    total = mem["weights"] + len(models) * per_slot
    return (f"memory about {total / 1e6:.1f} MB = weights {mem['weights'] / 1e6:.1f} MB (mapped once, shared by "
            f"the slots) + {len(models)} x (KV cache {mem['kv_cache'] / 1e6:.1f} MB + buffers "
            f"{mem['activations'] / 1e6:.1f} MB)")


def serve(path, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, ctx: int | None = None,
          threads: int | None = None, parallel: int = DEFAULT_PARALLEL, api_key: str | None = None,
          queue: int = DEFAULT_QUEUE, kv: str = "f16") -> int:
    """Run the server until Ctrl-C (or SIGTERM). threads: per slot (None: the physical cores divided
    among the slots, at least 1); kv: each slot's KV cache type (f16, q8, k8v4, f32). Status lines go to
    stderr; the first names the URL."""
    from .. import _ffi as ffi_module
    ffi_module.check_kv(kv)
    _require_server_packages()
    import uvicorn
    from .. import _ffi
    from ..model import EdgeqWarning, check_model_path, check_threads, load
    from .api import build_app
    from .slots import SlotPool

    if parallel < 1:
        raise EdgeqError(f"--parallel must be at least 1, got {parallel}")
    if queue < 0:
        raise EdgeqError(f"--queue must be 0 or more, got {queue}")
    if api_key is not None and not api_key.strip():
        raise EdgeqError("--api-key must not be empty")
    check_model_path(path)
    threads = check_threads(threads) or max(1, _ffi.physical_cores() // parallel)
    sock = _listen(host, port)
    models = []
    try:
        for _ in range(parallel):
            models.append(load(path, threads=threads, ctx=ctx, kv=kv))
        # a full context ends an answer with finish_reason "length"; no warning line per request
        warnings.filterwarnings("ignore", category=EdgeqWarning)
        pool = SlotPool(models, queue)
        model_id = models[0].path.name
        app = build_app(pool, model_id, api_key)
        bound_host, bound_port = sock.getsockname()[:2]
        url_host = f"[{bound_host}]" if ":" in bound_host else bound_host
        print(f"edgeq serve: {model_id}: {parallel} slot(s), context {models[0].n_ctx} tokens, {threads} thread(s) "
              f"each, queue {queue}; {_memory_line(models, threads)}", file=sys.stderr)
        print(f"edgeq serve: listening on http://{url_host}:{bound_port}/v1 (Ctrl-C stops)", file=sys.stderr,
              flush=True)
        server = _server_class()(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                                        timeout_graceful_shutdown=5), pool)
        # uvicorn re-raises the signal that stopped it once it has shut down: SIGTERM too becomes a
        # KeyboardInterrupt here, so both end with the same line
        main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, _interrupt) if main else None
        try:
            server.run(sockets=[sock])
        except KeyboardInterrupt:
            pass
        finally:
            if main:
                signal.signal(signal.SIGTERM, previous)
        print("edgeq serve: stopped", file=sys.stderr, flush=True)
        return 0
    finally:
        sock.close()
        if models and "pool" in locals():
            pool.close()
        else:
            for model in models:
                model.close()


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _server_class():
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, which on Ctrl-C / SIGTERM first stops the running generations (at their
        next token or batch of prompt tokens) and empties the queue, so connections close at once."""

        def __init__(self, config, pool):
            super().__init__(config)
            self.pool = pool
            self.loop = None

        async def serve(self, sockets=None):
            self.loop = asyncio.get_running_loop()
            await super().serve(sockets)

        def handle_exit(self, sig, frame):
            super().handle_exit(sig, frame)
            if self.loop is not None:
                self.loop.call_soon_threadsafe(self.pool.cancel_all)

    return Server


__all__ = ["serve", "DEFAULT_HOST", "DEFAULT_PORT", "DEFAULT_PARALLEL", "DEFAULT_QUEUE", "INSTALL_HINT"]
