"""Every exception a user can meet, in one place: each message names the key, file or URL at fault.

The commands turn these into a message and an exit code instead of a traceback. This module imports
nothing from the package, so any module can raise them without an import cycle.
"""

from __future__ import annotations

import signal
from pathlib import Path


class ConfigError(ValueError):
    """A user mistake in the composed config; the message lists every problem found."""


class RegistryError(ConfigError):
    """Dataset names that cannot be resolved; the message lists every problem."""


class CheckpointError(ConfigError):
    """A checkpoint that is missing, truncated, corrupt or unsafe to load."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written; the previous file at its path is untouched."""


class Preempted(Exception):
    """The run stopped on a signal after saving a checkpoint to resume from."""

    def __init__(self, signum: int, step: int, checkpoint: Path):
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        super().__init__(
            f"stopped by {signal.Signals(signum).name} at step {step}; checkpoint saved to {checkpoint}. "
            f"Resume with the same command plus resume={checkpoint}"
        )


class Diverged(RuntimeError):
    """The loss was not finite for too many optimizer steps in a row."""


class DataError(ValueError):
    """Data the run must not train on: strict-mode problems, too-long rows under truncation=error, no rows."""


class HubError(DataError):
    """A hub dataset that cannot be read (offline, unknown or gated id); the message says what to do."""


class DataFileError(ValueError):
    """A data file that cannot be read past some point; the message names the file and line."""


class MalformedRow(ValueError):
    """A data row that cannot be turned into a conversation; the message says why."""


class TemplateError(ValueError):
    """The template does not render a conversation as a growing prefix, so masks cannot be derived."""


class SearchSpaceError(ValueError):
    """A search-space entry Optuna cannot sample from."""


class ExportError(ValueError):
    """A run or model directory that cannot be loaded or exported; the message names the path."""


class EndpointError(ValueError):
    """An endpoint that cannot be reached or answers with an error; the message names the URL."""


class JudgeError(EndpointError):
    """A judge setting or generations file that cannot be used; the message names it."""


class RequestError(ValueError):
    """A request the server cannot serve; `param` names the offending field, `status` the HTTP status."""

    def __init__(self, message: str, param: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.param, self.status = param, status


class SuiteError(ValueError):
    """A suite file with rows that cannot be used; the message lists every problem as file:line."""


class CheckerError(ValueError):
    """A checker called with an unknown name or with parameters that do not fit it; the message names it."""


class HarnessError(ValueError):
    """lm-eval is missing, or a task cannot be found."""


class PrepareError(ValueError):
    """A preparation setting or input that cannot be used; the message names the key or file."""
