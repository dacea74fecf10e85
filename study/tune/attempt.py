"""Fencing a trial's stale attempts: only the latest attempt of a trial writes its folder.

Tune retries a trial whose node stopped answering on another node. The first node may not be dead:
cut off from the head but not from the storage, its attempt goes on writing the trial's folder,
over the retry's files. So each attempt takes a token when it starts, a random id written to the
folder's attempt.json in the store (that record is the only one that counts), and checks it
before each write to the folder and each push to the store: when the record holds another token,
the write is refused with `StaleAttempt` and the attempt stops, leaving the folder to the newer one.

A check and the write after it are two steps (pyarrow offers object stores no conditional write):
a write already past its check when the newer attempt takes over still lands, one file at most,
within milliseconds of the takeover. The newer attempt writes every file again as it trains.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import socket
import uuid
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from study import layout
from study.errors import StaleAttempt
from study.tune.storage import Store


@dataclass(frozen=True)
class Attempt:
    """One attempt's claim on a trial folder (`trial_dir`, relative to the store at `storage`)."""

    storage: str
    trial_dir: str
    token: str

    @classmethod
    def take(cls, store: Store, trial_dir: str) -> Attempt:
        """Start an attempt: its token becomes the folder's current one (any older attempt is fenced)."""
        token = uuid.uuid4().hex
        record = {"token": token, "host": socket.gethostname(), "pid": os.getpid(),
                  "started": datetime.datetime.now().isoformat(timespec="seconds")}
        store.write_text(f"{trial_dir}/{layout.ATTEMPT}", json.dumps(record))
        return cls(storage=store.uri(), trial_dir=trial_dir, token=token)

    @cached_property
    def _store(self) -> Store:
        return Store(self.storage)

    def current(self) -> dict[str, Any] | None:
        """The folder's attempt record ({token, host, pid, started}), None if there is none."""
        text = self._store.read_text(f"{self.trial_dir}/{layout.ATTEMPT}")
        return json.loads(text) if text else None

    def check(self) -> None:
        """Return if this attempt may still write the folder, else raise StaleAttempt."""
        record = self.current()
        if record is None or record.get("token") != self.token:
            holder = "its attempt record is gone" if record is None else (
                f"attempt {record.get('token', '?')[:8]} on {record.get('host')} (pid {record.get('pid')}, "
                f"started {record.get('started')}) took it over")
            raise StaleAttempt(f"{self._store.uri(self.trial_dir)}: this attempt ({self.token[:8]}) may no "
                               f"longer write the trial's folder: {holder}; stopping")

    def to_dict(self) -> dict[str, str]:
        """Plain data for the Ray boundary; `Attempt(**data)` rebuilds it."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
