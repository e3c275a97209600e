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

from ..config import UiConfig, check, checked_cli
from ..errors import ConfigError
from ..locations import CONF_DIR
from ..serving.serve import is_loopback  # noqa: E402 (after the check above, which is quick)
from .configs import Roots  # noqa: E402


def option_problems(cfg: DictConfig, password: str | None) -> list[str]:
    """A host other machines reach without a password (each setting's own range is checked by UiConfig)."""
    problems = []
    if not is_loopback(cfg.host) and not password:
        problems.append(
            f"host={cfg.host}: other machines could reach the page and start runs; set a password in "
            f"${cfg.password_env} (the page then asks for user '{cfg.user}'), or keep host=127.0.0.1"
        )
    return problems


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="ui")
def main(cfg: DictConfig) -> None:
    """Check the settings, build the page and serve it."""
    from .app import CSS, Settings, build  # the page's Gradio blocks load once the settings are good

    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own start-up requests
    password = os.environ.get(cfg.password_env) or None
    try:
        check(cfg, UiConfig)
    except ConfigError as err:
        print(err, file=sys.stderr)
        sys.exit(2)
    problems = option_problems(cfg, password)
    if problems:
        print("\n".join(problems), file=sys.stderr)
        sys.exit(2)
    roots = Roots([cfg.log_dir, *cfg.data_dirs])
    log_dir = roots.resolve(cfg.log_dir)
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


cli = checked_cli(main, UiConfig)

if __name__ == "__main__":
    cli()
