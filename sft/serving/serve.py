"""`python -m sft.serve run=<run or model dir>`: an OpenAI-compatible HTTP server over a tuned model.

Endpoints: `POST /v1/chat/completions` and `POST /v1/completions` (whole or streamed as server-sent events;
`n` must be 1), `GET /v1/models`, `GET /health`. Chat prompts are rendered with the model's own chat template
and replies end at its end-of-turn token(s). Concurrent requests are decoded together in one batch
(`batching`); the HTTP side is a Starlette app (`app`) under uvicorn. The server has no authentication beyond
an optional shared bearer token (the env var named by `api_key_env`), so it binds 127.0.0.1 and refuses any
other interface unless `allow_remote=true`.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import sys
import threading
from pathlib import Path

import hydra
import uvicorn
from omegaconf import DictConfig

from ..config import ServeConfig, check, checked_cli
from ..errors import ConfigError, ExportError
from ..locations import CONF_DIR
from .app import build_app
from .batching import Engine
from .chat import load_on_device


class Server:
    """The app under uvicorn on a socket bound at creation (port 0: a free one, see `server_address`).

    `serve_forever` blocks until `shutdown` (from another thread); `server_close` then stops the engine.
    """

    def __init__(
        self, engine: Engine, name: str, host: str, port: int, api_key_env: str, max_tokens: int, quiet: bool
    ) -> None:
        self.engine, self.name = engine, name
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.socket = socket.create_server((host, port), family=family)
        self.server_address = self.socket.getsockname()
        app = build_app(engine, name, api_key_env, max_tokens)
        # quiet: no access log and no logging setup of uvicorn's own (it would reconfigure the process's).
        config = uvicorn.Config(
            app,
            log_config=None if quiet else uvicorn.config.LOGGING_CONFIG,
            log_level="warning" if quiet else "info",
            access_log=not quiet,
            lifespan="off",
            timeout_graceful_shutdown=5,
        )
        self.uvicorn = uvicorn.Server(config)
        self._stopped = threading.Event()

    def serve_forever(self) -> None:
        """Serve until `shutdown`."""
        try:
            self.uvicorn.run(sockets=[self.socket])
        finally:
            self._stopped.set()

    def shutdown(self, timeout: float = 30.0) -> None:
        """Ask `serve_forever` to return (open streams get a few seconds) and wait until it has."""
        self.uvicorn.should_exit = True
        self._stopped.wait(timeout)

    def server_close(self) -> None:
        """Stop the engine (requests still running get an error) and close the socket."""
        self.engine.stop()
        self.socket.close()


def make_server(
    model,
    tokenizer,
    name: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key_env: str = "SFT_SERVE_API_KEY",
    default_max_tokens: int = 256,
    quiet: bool = False,
    max_batch_size: int = 32,
    max_batch_tokens: int = 2048,
    threads: int | None = None,
) -> Server:
    """A bound (not yet serving) server over `model`, its generation worker started.

    The key in `$api_key_env` is read per request, so setting or clearing it takes effect at once.
    """
    engine = Engine(model, tokenizer, max_batch_size, max_batch_tokens, threads)
    server = Server(engine, name, host, port, api_key_env, default_max_tokens, quiet)  # binds: may fail
    engine.start()
    return server


def is_loopback(host: str) -> bool:
    """Whether `host` names only this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def option_problems(cfg: DictConfig) -> list[str]:
    """A host that would serve other machines without allow_remote (each setting's own range is checked by
    its schema, ServeConfig)."""
    problems = []
    if not is_loopback(str(cfg.host)) and not cfg.allow_remote:
        problems.append(
            f"host={cfg.host}: not a loopback address and the server has no authentication beyond an "
            "optional shared key; set allow_remote=true to bind it anyway"
        )
    return problems


def open_server(cfg: DictConfig) -> Server:
    """Check the settings, load the model onto its device and bind the server."""
    check(cfg, ServeConfig)
    problems = option_problems(cfg)
    if problems:
        raise ConfigError("Invalid config:\n  " + "\n  ".join(problems))
    model, tokenizer, _ = load_on_device(cfg)
    name = cfg.model_name or Path(cfg.run).expanduser().resolve().name
    return make_server(
        model,
        tokenizer,
        name,
        cfg.host,
        cfg.port,
        cfg.api_key_env,
        cfg.max_tokens,
        max_batch_size=cfg.max_batch_size,
        max_batch_tokens=cfg.max_batch_tokens,
        threads=cfg.threads,
    )


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="serve")
def main(cfg: DictConfig) -> None:
    """`python -m sft.serve run=<dir>`; a wrong directory or setting exits 2 with its message."""
    try:
        server = open_server(cfg)
    except (ExportError, ConfigError, OSError) as err:
        print(err, file=sys.stderr)
        sys.exit(2)
    host, port = server.server_address[:2]
    keyed = f"; requests need the key in ${cfg.api_key_env}" if os.environ.get(cfg.api_key_env) else ""
    print(f"serving {server.name} at http://{host}:{port}/v1 (batches of up to {cfg.max_batch_size}{keyed})")
    sys.stdout.flush()
    try:
        server.serve_forever()  # uvicorn handles Ctrl+C itself: it returns after a graceful shutdown
    finally:
        server.server_close()


cli = checked_cli(main, ServeConfig)

if __name__ == "__main__":
    cli()
