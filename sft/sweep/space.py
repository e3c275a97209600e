"""Search spaces written in Hydra's sweep syntax, as Optuna distributions, and trials back as overrides.

`choice(8, 16)` or `8,16` is categorical, `range(1, 4)` integers (stop excluded, as in Python),
`interval(1e-5, 1e-4)` continuous; `tag(log, ...)` samples on a log scale. Anything else is fixed.
"""

from __future__ import annotations

from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from ..errors import SearchSpaceError


def _distribution(override: Override) -> BaseDistribution:
    """The Optuna distribution of one sweep override."""
    sweep, key = override.value(), override.get_key_element()
    log = "log" in sweep.tags
    if isinstance(sweep, ChoiceSweep):
        return CategoricalDistribution(list(override.sweep_iterator()))
    if isinstance(sweep, RangeSweep):
        start, stop, step = sweep.start, sweep.stop, sweep.step
        values = list(override.sweep_iterator())
        if not values:
            raise SearchSpaceError(f"{key}: range({start}, {stop}, step={step}) is empty")
        if all(isinstance(v, int) for v in (start, stop, step)):
            return IntDistribution(values[0], values[-1], step=1 if log else step, log=log)
        return FloatDistribution(values[0], values[-1], step=None if log else step, log=log)
    if isinstance(sweep, IntervalSweep):
        if isinstance(sweep.start, int) and isinstance(sweep.end, int):
            return IntDistribution(sweep.start, sweep.end, log=log)
        return FloatDistribution(float(sweep.start), float(sweep.end), log=log)
    raise SearchSpaceError(f"{key}: unsupported sweep {override.input_line!r}")


def parse(entries: list[str]) -> tuple[dict[str, BaseDistribution], list[str]]:
    """Split `key=value` entries into a search space (key -> distribution) and fixed overrides."""
    space: dict[str, BaseDistribution] = {}
    fixed: list[str] = []
    for override in OverridesParser.create().parse_overrides(entries):
        if override.is_sweep_override():
            space[override.get_key_element()] = _distribution(override)
        else:
            fixed.append(f"{override.get_key_element()}={override.get_value_element_as_str()}")
    return space, fixed


def _format(value: Any) -> str:
    """A sampled value as Hydra override text (strings quoted so commas or spaces stay one value)."""
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if value is None:
        return "null"
    return repr(value) if isinstance(value, float) else str(value)


def as_overrides(params: dict[str, Any]) -> list[str]:
    """A trial's parameters as Hydra overrides."""
    return [f"{key}={_format(value)}" for key, value in params.items()]
