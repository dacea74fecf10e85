"""The two kinds of user error, raised before any training starts and reported without a traceback."""

from __future__ import annotations

from pathlib import Path


class ConfigError(ValueError):
    """A bad value in a study file: which key, which value, what is allowed."""

    def __init__(self, key: str, message: str, *, file: str | Path | None = None) -> None:
        self.key = key
        self.message = message
        self.file = str(file) if file is not None else None
        super().__init__(self._text())

    def _text(self) -> str:
        where = f"{self.file}: " if self.file else ""
        return f"{where}{self.key}: {self.message}" if self.key else f"{where}{self.message}"

    def under(self, prefix: str) -> ConfigError:
        """The same error with its key nested under `prefix`."""
        key = f"{prefix}.{self.key}" if prefix and self.key else (prefix or self.key)
        return ConfigError(key, self.message, file=self.file)

    def in_file(self, file: str | Path) -> ConfigError:
        return ConfigError(self.key, self.message, file=file)


def require(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(key, message)


class DataError(ValueError):
    """A dataset that cannot be trained on; the message lists each problem with its record id."""


class StorageError(OSError):
    """An operation on the study's storage that still failed after its retries; names both."""


class StaleAttempt(RuntimeError):
    """An attempt of a trial whose folder a newer attempt has taken over (`study.tune.attempt`): it
    must stop writing there."""
