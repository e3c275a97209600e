"""`python -m sft.prepare <step> key=value ...`: one Hydra-configured data preparation step.

Each step's settings live in conf/prepare/<step>.yaml; `python -m sft.prepare report <file>` takes the
file as its first argument.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from ..config import PREPARE_STEPS, check, exit_on_unknown_keys, with_backend
from ..errors import ConfigError, EndpointError, PrepareError
from ..locations import CONF_DIR
from .generate import cross_field_problems
from .steps import STEPS

# Rules that relate several settings of a step (each setting's own range is in its schema).
CROSS_FIELD = {"generate": cross_field_problems}

USAGE = (
    "usage: python -m sft.prepare {"
    + ",".join(STEPS)
    + "} key=value ... (settings: conf/prepare/<step>.yaml)"
)


def main(argv: list[str] | None = None) -> None:
    """Dispatch to the step named first; a bad setting, input or endpoint exits 2 with its message."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in STEPS:
        print(USAGE if not args else f"unknown step {args[0]!r}\n{USAGE}", file=sys.stderr)
        sys.exit(2)
    step, rest = args[0], args[1:]
    if rest and "=" not in rest[0] and not rest[0].startswith("-"):
        rest[0] = f"input={rest[0]}"  # `report <file>`, `dedup <file> output=...`

    # Before composing, the backend's keys are those of the one chosen here, else of the steps' default
    # (`/backend: local` in conf/prepare/); after composing, of the one composed.
    chosen = next((a.split("=", 1)[1] for a in rest if a.startswith("backend=")), "local")
    try:
        exit_on_unknown_keys(rest, with_backend(PREPARE_STEPS[step], chosen))
    except ConfigError as err:
        print(f"{step}: {err}", file=sys.stderr)
        sys.exit(2)

    def run(cfg: DictConfig) -> None:
        try:
            kind = cfg.backend.kind if "backend" in cfg else ""
            check(cfg, with_backend(PREPARE_STEPS[step], kind), CROSS_FIELD.get(step))
            STEPS[step](cfg)
        except (ConfigError, PrepareError, EndpointError) as err:
            print(f"{step}: {err}", file=sys.stderr)
            sys.exit(2)

    sys.argv = [sys.argv[0], *rest]
    hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name=f"prepare/{step}")(run)()


if __name__ == "__main__":
    main()
