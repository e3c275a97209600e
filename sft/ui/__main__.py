"""`python -m sft.ui [port=7860] [host=127.0.0.1]`: serve the page until Ctrl+C (runs it started are stopped
with a checkpoint first)."""

from __future__ import annotations

import logging
import os
import sys

import hydra
from omegaconf import DictConfig

try:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no telemetry or version checks
    import gradio  # noqa: F401
except ImportError:
    sys.exit("sft.ui needs Gradio: pip install -e '.[ui]' (or make setup)")

from ..locations import CONF_DIR, SOURCE_DIR
from ..serving.serve import is_loopback  # noqa: E402 (after the check above, which is quick)
from .configs import Roots  # noqa: E402


def option_problems(cfg: DictConfig, password: str | None) -> list[str]:
    """Settings that must not start a server, each named with its key."""
    problems = []
    if not 0 < cfg.port < 65536:
        problems.append(f"port={cfg.port}: a number in 1..65535")
    if not is_loopback(cfg.host) and not password:
        problems.append(
            f"host={cfg.host}: other machines could reach the page and start runs; set a password in "
            f"${cfg.password_env} (the page then asks for user '{cfg.user}'), or keep host=127.0.0.1"
        )
    if cfg.refresh_seconds <= 0:
        problems.append(f"refresh_seconds={cfg.refresh_seconds}: a positive number")
    return problems


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="ui")
def main(cfg: DictConfig) -> None:
    """Check the settings, build the page and serve it."""
    from .app import CSS, Settings, build

    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own start-up requests
    password = os.environ.get(cfg.password_env) or None
    problems = option_problems(cfg, password)
    if problems:
        print("\n".join(problems), file=sys.stderr)
        sys.exit(2)
    roots = Roots([cfg.log_dir, *cfg.data_dirs])
    log_dir = roots.resolve(cfg.log_dir)
    # Relative paths in configs (data files, ../shared/data) mean what they mean to `make train`.
    os.chdir(SOURCE_DIR)
    page = build(Settings(log_dir, roots, list(cfg.overrides), cfg.refresh_seconds, (cfg.password_env,)))
    auth = (cfg.user, password) if password else None
    print(f"sft.ui: http://{cfg.host}:{cfg.port}  (runs in {log_dir})", flush=True)
    if auth:
        print(f"sft.ui: password required (user '{cfg.user}', password from ${cfg.password_env})", flush=True)
    try:
        page.queue().launch(
            server_name=cfg.host,
            server_port=cfg.port,
            auth=auth,
            show_error=True,
            quiet=True,
            ssr_mode=False,
            css=CSS,
        )
    finally:
        page.launcher.shutdown()


if __name__ == "__main__":
    main()
