"""Where a study keeps its files: a local folder, or a URI that every node of a cluster reaches.

`--storage runs` (a path): every file is read and written in place, as on one machine (or on a
file system that every node mounts at the same path).

`--storage s3://bucket/runs` (any URI pyarrow opens: s3://, gs://, abfs://, hdfs://, file://; an
S3-compatible server with `?endpoint_override=host:port&scheme=http`): the URI is the one source
of truth and no node's disk is trusted to last. Each trial works in a fresh local folder: it
first pulls its own checkpoint and metric log (so it resumes on whichever node it lands), a
branch pulls its trunk's fork checkpoint, and rank 0 pushes every file right after writing it
(metric rows, checkpoints, fork checkpoints, the failure marker). The synthetic set is made on
each node (it is deterministic); the pre-trained backbone is made once by the driver, pushed,
and pulled by the trials. Tune's and Ray Train's own state go to the URI directly: Ray reads the
same URIs through the same library.

Object stores fail for a while (throttling, 5xx, timeouts). Two layers retry: the AWS SDK inside
pyarrow retries each HTTP request (its standard strategy, a few attempts within seconds), and
`Store` retries each whole operation (an upload, a download, a listing) with exponential backoff
for longer (`Retry`: by default 6 attempts over about half a minute), because an outage outlasts
the SDK's attempts and a download cut short is only caught by comparing sizes. After the last
attempt a `StorageError` names the operation and the object. An upload goes to a temporary
object beside its destination, is checked for its size and then moved into place, so a reader
sees the old object or the new one, never a part (pyarrow completes an upload it is closed on,
even after an error).
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import random
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

from study import layout
from study.layout import is_uri
from study.errors import ConfigError, StorageError


T = TypeVar("T")
UPLOADING = ".uploading"  # the suffix of an object being uploaded (never listed)


@dataclass(frozen=True)
class Retry:
    """How `Store` retries an operation on a URI: `attempts` in all, waiting `first_wait_s`,
    then twice as long each time up to `max_wait_s` (times a random 0.5-1, so that many nodes
    do not retry in step)."""

    attempts: int = 6
    first_wait_s: float = 1.0
    max_wait_s: float = 16.0

    def wait_s(self, attempt: int) -> float:
        return min(self.max_wait_s, self.first_wait_s * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)


class Store:
    """A folder (a path or a URI) addressed by '/'-separated relative paths."""

    def __init__(self, root: str | Path, retry: Retry = Retry()):
        root = str(root)
        self.remote = is_uri(root)
        self.retry = retry
        if self.remote:
            import pyarrow.fs

            parts = urlsplit(root)
            self._prefix = root.split("?", 1)[0].rstrip("/")
            self._query = f"?{parts.query}" if parts.query else ""
            self.fs, self._base = pyarrow.fs.FileSystem.from_uri(root)
            self._base = self._base.rstrip("/")
        else:
            self._prefix, self._query = str(Path(root).resolve()), ""
            self.fs, self._base = None, self._prefix

    def uri(self, *rel: str) -> str:
        """The location of `rel` as Ray and pyarrow take it (a path, or a URI with the query kept)."""
        return "/".join([self._prefix, *[r.strip("/") for r in rel if r]]) + self._query

    def _path(self, rel: str) -> str:
        return "/".join([self._base, rel.strip("/")]) if rel else self._base

    def local(self, rel: str) -> Path:
        """The local path of `rel` (only for a local store)."""
        assert not self.remote
        return Path(self._path(rel))

    def _retrying(self, what: str, rel: str, operation: Callable[[], T]) -> T:
        """`operation()`, tried again after an OSError (not: no such file, a full disk) as `retry`
        says; then a StorageError naming `what` and the object."""
        start = time.monotonic()
        for attempt in range(1, self.retry.attempts + 1):
            try:
                return operation()
            except (FileNotFoundError, StorageError):
                raise
            except OSError as e:
                if e.errno == errno.ENOSPC:
                    raise
                last = e
                if attempt < self.retry.attempts:
                    time.sleep(self.retry.wait_s(attempt))
        first_line = str(last).strip().splitlines()[0] if str(last).strip() else type(last).__name__
        raise StorageError(f"{what} {self.uri(rel)} failed {self.retry.attempts} times in "
                           f"{time.monotonic() - start:.0f} s; the last error: {first_line}") from last

    def _info(self, rel: str):  # -> pyarrow.fs.FileInfo
        return self.fs.get_file_info(self._path(rel))

    def exists(self, rel: str) -> bool:
        if not self.remote:
            return self.local(rel).exists()
        import pyarrow.fs

        return self._retrying("looking up", rel, lambda: self._info(rel).type != pyarrow.fs.FileType.NotFound)

    def listdir(self, rel: str) -> list[str]:
        """Names in the folder `rel` (empty if it does not exist)."""
        if not self.remote:
            folder = self.local(rel)
            return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
        import pyarrow.fs

        if not self.exists(rel):
            return []
        infos = self._retrying("listing", rel, lambda: self.fs.get_file_info(pyarrow.fs.FileSelector(self._path(rel))))
        return sorted(name for name in (Path(i.path).name for i in infos) if not name.endswith(UPLOADING))

    def list_files(self, rel: str) -> dict[str, int]:
        """Every file under the folder `rel`, recursively: {path relative to `rel`: size}."""
        if not self.remote:
            folder = self.local(rel)
            return ({p.relative_to(folder).as_posix(): p.stat().st_size for p in folder.rglob("*") if p.is_file()}
                    if folder.is_dir() else {})
        import pyarrow.fs

        base = self._path(rel)
        selector = pyarrow.fs.FileSelector(base, recursive=True, allow_not_found=True)
        infos = self._retrying("listing", rel, lambda: self.fs.get_file_info(selector))
        return {i.path[len(base) + 1:]: i.size for i in infos
                if i.type == pyarrow.fs.FileType.File and not i.path.endswith(UPLOADING)}

    def read_text(self, rel: str) -> str | None:
        if not self.remote:
            path = self.local(rel)
            return path.read_text() if path.is_file() else None
        with tempfile.TemporaryDirectory() as d:
            return (Path(d) / "file").read_text() if self.get(rel, Path(d) / "file") else None

    def write_text(self, rel: str, text: str) -> None:
        with tempfile.TemporaryDirectory() as d:
            src = Path(d) / "file"
            src.write_text(text)
            self.put(src, rel)

    def get(self, rel: str, dest: str | Path, *, size: int | None = None) -> bool:
        """Copy `rel` to the local file `dest` (atomically); False if there is no such file.
        `size`: the object's size when a listing gave it (saves a request per object)."""
        dest = Path(dest)
        if not self.remote:
            if not self.local(rel).exists():
                return False
            if self.local(rel).resolve() != dest.resolve():
                layout.atomic_write(dest, lambda tmp: shutil.copyfile(self.local(rel), tmp))
            return True
        import pyarrow.fs

        if size is None:
            info = self._retrying("looking up", rel, lambda: self._info(rel))
            if info.type == pyarrow.fs.FileType.NotFound:
                return False
            size = info.size

        def download(tmp: Path) -> None:
            nonlocal size
            if size is None:  # the last try read another size: the object may have been replaced
                size = self._info(rel).size
            # one request for the whole object: reads in pieces are separate ranged requests,
            # and an object replaced between two of them would come back as a mix of both
            with self.fs.open_input_file(self._path(rel)) as src:
                data = src.read()
            if len(data) != size:  # cut short, or replaced by one of another size meanwhile
                expected, size = size, None
                raise OSError(f"read {len(data):,} of {expected:,} bytes")
            tmp.write_bytes(data)

        self._retrying("download of", rel, lambda: layout.atomic_write(dest, download))
        return True

    def put(self, src: str | Path, rel: str) -> None:
        """Copy the local file `src` to `rel`; readers never see a half-written file."""
        if not self.remote:
            dest = self.local(rel)
            if Path(src).resolve() != dest.resolve():
                layout.atomic_write(dest, lambda tmp: shutil.copyfile(src, tmp))
            return
        path = self._path(rel)
        size = Path(src).stat().st_size
        self._retrying("creating the folder of", rel,
                       lambda: self.fs.create_dir(path.rsplit("/", 1)[0], recursive=True))

        def upload() -> None:  # aside, checked, then moved into place (one step on the server)
            tmp = path + UPLOADING
            with open(src, "rb") as f, self.fs.open_output_stream(tmp) as out:
                shutil.copyfileobj(f, out, 1 << 20)
            written = self.fs.get_file_info(tmp).size
            if written != size:
                raise OSError(f"uploaded {written:,} of {size:,} bytes")
            try:
                self.fs.move(tmp, path)
            except NotImplementedError:  # a store without a move (e.g. flat Azure blobs): a server-side copy
                self.fs.copy_file(tmp, path)
                self.fs.delete_file(tmp)

        self._retrying("upload to", rel, upload)

    def copy(self, src_rel: str, rel: str) -> None:
        """Copy the object `src_rel` to `rel` on the server (one step: the old object or the new one)."""
        if not self.remote:
            layout.atomic_write(self.local(rel), lambda tmp: shutil.copyfile(self.local(src_rel), tmp))
            return
        self._retrying("copy to", rel, lambda: self.fs.copy_file(self._path(src_rel), self._path(rel)))

    def delete(self, rel: str) -> None:
        """Remove the file `rel` if it exists."""
        if not self.remote:
            self.local(rel).unlink(missing_ok=True)
        elif self.exists(rel):
            try:
                self._retrying("deletion of", rel, lambda: self.fs.delete_file(self._path(rel)))
            except FileNotFoundError:
                pass

    def put_tree(self, src: str | Path, rel: str) -> None:
        """Copy a local folder's files (recursively) to `rel`."""
        for path in sorted(Path(src).rglob("*")):
            if path.is_file():
                self.put(path, f"{rel}/{path.relative_to(src).as_posix()}")


def pull_files(store: Store, rel_dir: str, local_dir: Path, names: tuple[str, ...] | list[str]) -> None:
    """Copy the files `names` of the store folder `rel_dir` that exist into `local_dir`."""
    for name in names:
        store.get(f"{rel_dir}/{name}", local_dir / name)


def pusher(store: Store, local_root: Path, rel_root: str,
           fence: Callable[[], None] = lambda: None):  # -> Callable[[Path], None]
    """A function that makes the store's copy of a file under `local_root` (the same place under
    `rel_root`) what the local file is: copied, or deleted if the local file is gone. A file
    renamed locally since it was pushed (the same inode, size and time: checkpoint.pt kept as
    checkpoint.prev.pt) is copied on the server from the object it was pushed as, not uploaded again.
    `fence()` runs before each push: it raises when this attempt may no longer write (`study.tune.attempt`)."""
    pushed: dict[tuple[int, int, int], str] = {}  # (inode, size, mtime) -> the object it went to

    def push(path: Path) -> None:
        fence()
        rel = f"{rel_root}/{Path(path).relative_to(local_root).as_posix()}"
        if not Path(path).is_file():
            store.delete(rel)
            return
        stat = Path(path).stat()
        key = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        if store.remote and pushed.get(key, rel) != rel:
            store.copy(pushed[key], rel)
        else:
            store.put(path, rel)
        pushed[key] = rel
    return push


def fetch_run(store: Store, name: str, dest: Path) -> Path:
    """Copy a study run's durable results (config, run info, halving's decisions, every trial's
    metric log, fork record and failure marker; no checkpoints) from the store into `dest`; returns `dest`."""
    dest.mkdir(parents=True, exist_ok=True)
    pull_files(store, name, dest, [layout.STUDY_FILE, layout.RUN_INFO, layout.HALVING])
    for trial in store.listdir(layout.trial_path(name)):
        (dest / layout.TRIALS / trial).mkdir(parents=True, exist_ok=True)
        pull_files(store, layout.trial_path(name, trial), dest / layout.TRIALS / trial, layout.RESULT_FILES)
    return dest


def open_run(run_uri: str) -> tuple[Store, str]:
    """(the store that holds it, its name) of a study run given as a URI (`s3://bucket/runs/NAME`,
    with any `?query` kept for the store); a ConfigError if it holds no trials."""
    location, mark, query = run_uri.partition("?")
    root, _, name = location.rstrip("/").rpartition("/")
    store = Store(root + mark + query)
    if not store.listdir(layout.trial_path(name)):
        raise ConfigError("RUN_DIR", f"{run_uri} is not a study run (no {layout.TRIALS}/ in it)")
    return store, name


def analyze_stored(store: Store, name: str, *, out: Path | None = None,
                   tol: float | None = None) -> tuple[str, str]:
    """Write the report of the run `name` in `store` (default: its report/ folder; for a URI store
    without `out`, pushed there); returns (the summary, where report.md is)."""
    from study.analysis.report import write_report  # pandas and matplotlib: only when analysing

    if not store.remote:
        run_dir = store.local(name)
        report, summary = write_report(run_dir, out or run_dir / layout.REPORT, tol=tol)
        return summary, str(report)
    with tempfile.TemporaryDirectory() as tmp:  # analyse a local copy of the results
        local = fetch_run(store, name, Path(tmp) / name)
        report, summary = write_report(local, out or Path(tmp) / layout.REPORT, tol=tol)
        if out is not None:
            return summary, str(report)
        store.put_tree(Path(tmp) / layout.REPORT, f"{name}/{layout.REPORT}")
        return summary, store.uri(name, layout.REPORT, report.name)


def node_dir(kind: str) -> Path:
    """This node's own folder for `kind` (data: the synthetic set, made once per node; work:
    trials' scratch folders; pretrained: the backbone pulled from the store) when the study's
    storage is a URI: $STUDY_LOCAL_DIR, else a folder in the system's temp directory."""
    root = Path(os.environ.get("STUDY_LOCAL_DIR") or Path(tempfile.gettempdir()) / f"study-{os.getuid()}")
    path = root / kind
    path.mkdir(parents=True, exist_ok=True)
    return path


class RunLock:
    """Held by the `study run` that writes `<storage>/<name>`; a second one is refused (ConfigError).

    On a folder it is an advisory lock on `<name>/.lock` (flock), which the OS releases when the
    process dies, so `--resume` after a crash finds it free. On a URI, where no lock exists, it is
    a lease object `<name>/lock.json` that a background thread renews every `renew_s` seconds; a
    lease older than `stale_s` (its holder died) is taken over.
    """

    def __init__(self, store: Store, name: str, *, renew_s: float = 20.0, stale_s: float = 90.0):
        self.store, self.name, self.renew_s, self.stale_s = store, name, renew_s, stale_s
        self._file = None
        self._stop = None

    def _holder(self) -> dict:
        return {"host": socket.gethostname(), "pid": os.getpid(),
                "since": datetime.datetime.now().isoformat(timespec="seconds")}

    def _refuse(self, holder: str) -> None:
        raise ConfigError("--name", f"{self.store.uri(self.name)} is being written by another `study run` "
                                    f"({holder}); wait for it to finish, or choose another --name")

    def __enter__(self) -> RunLock:
        if not self.store.remote:
            path = self.store.local(f"{self.name}/{layout.LOCK}")
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(path, "a+")
            try:
                fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self._file.seek(0)
                holder = self._file.read().strip() or "unknown process"
                self._file.close()
                self._refuse(holder)
            self._file.seek(0)
            self._file.truncate()
            self._file.write(json.dumps(self._holder()))
            self._file.flush()
            return self
        rel = f"{self.name}/{layout.LEASE}"
        text = self.store.read_text(rel)
        if text is not None:
            lease = json.loads(text)
            if time.time() - lease.get("renewed", 0) < self.stale_s:
                self._refuse(json.dumps({k: lease[k] for k in ("host", "pid", "since") if k in lease}))
        me = self._holder()
        self.store.write_text(rel, json.dumps({**me, "renewed": time.time()}))
        self._stop = threading.Event()

        def renew() -> None:
            while not self._stop.wait(self.renew_s):
                try:
                    self.store.write_text(rel, json.dumps({**me, "renewed": time.time()}))
                except OSError as e:  # storage down for a while: try again at the next renewal
                    print(f"warning: could not renew the lease {self.store.uri(rel)}: {e}", flush=True)

        threading.Thread(target=renew, daemon=True, name="study-run-lease").start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._file is not None:
            self._file.close()  # releases the flock
        if self._stop is not None:
            self._stop.set()
            self.store.delete(f"{self.name}/{layout.LEASE}")
