"""The library's known errors: each says what is wrong and the next step.

Front ends (the CLI, the explorer, the batch jobs) catch `RecsysError` and show
`str(error)`: one line with the cause, then the next step. Nothing here imports
torch or the database layer, so the CLI can catch these without loading either.
"""

from __future__ import annotations


class RecsysError(Exception):
    """A user-facing failure: `message` (what is wrong) and `hint` (the command or setting that fixes it)."""

    def __init__(self, message: str, hint: str = "") -> None:
        self.message = message
        self.hint = hint
        super().__init__(f"{message}; {hint}" if hint else message)


class EmptyCatalogError(RecsysError):
    """The catalog has no songs (or too few) for what was asked."""


class NoModelsError(RecsysError):
    """The workspace has no trained model pair."""


class NoVectorsError(RecsysError):
    """The catalog has songs but none has vectors of the current model pair."""


class UnknownSingerError(RecsysError):
    """A singer name that is not in the catalog; `suggestions` are the closest names."""

    def __init__(self, name: str, suggestions: list[str]) -> None:
        self.name = name
        self.suggestions = suggestions
        hint = f"did you mean {', '.join(repr(s) for s in suggestions)}?" if suggestions else (
            "`recsys catalog` lists the singers")
        super().__init__(f"no singer named {name!r} in the catalog", hint)


class DatabaseUnavailableError(RecsysError):
    """The catalog database cannot be reached (the message names host and port, never a password)."""


class DeviceUnavailableError(RecsysError):
    """A compute device was asked for that this machine does not have."""


class ModelMismatchError(RecsysError):
    """Stored models or vectors were made under other settings than the workspace's now."""


class InvalidOptionError(RecsysError):
    """An option or argument value the command cannot use (front ends exit with a usage status)."""


class MissingDependencyError(RecsysError):
    """An optional package the asked feature needs is not installed (the hint names the install)."""
