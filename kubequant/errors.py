"""Errors that reach a user: each names what is wrong (a field path or a file and row) and the fix."""

from __future__ import annotations


class KubequantError(Exception):
    """Base of every error a user can act on. The CLI prints it on one line and exits with ``exit_code``."""

    exit_code = 1

    def __init__(self, message: str, *, where: str | None = None, fix: str | None = None) -> None:
        self.message = message
        self.where = where
        self.fix = fix
        super().__init__(self.one_line())

    def one_line(self) -> str:
        parts = [f"{self.where}: {self.message}" if self.where else self.message]
        if self.fix:
            parts.append(f"fix: {self.fix}")
        return " — ".join(parts)


class InputError(KubequantError):
    """The user's input (manifest, file, flag) is wrong; exit code 2."""

    exit_code = 2


class ValidationError(InputError):
    """A manifest breaks the API's rules; ``where`` is the field path."""


class DataError(InputError):
    """A data file or bundle is unusable; ``where`` is the file (and row)."""


class ConfigError(InputError):
    """A run's configuration refers to something that does not exist (a class, a period, a universe)."""


class BrokerError(KubequantError):
    """A broker refused or failed a request."""
