"""Shared storage that fails for a while, for real: the S3 stand-in answers a share of requests
with 503 SlowDown / 500 InternalError, cuts downloads short, or refuses everything for longer
than the AWS SDK's own retries last. `Store` retries whole operations, gives up with an error
naming the operation and the object, and never lets a reader see half an object."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from study import layout
from study.config import StudyConfig
from study.plan.trials import Trial
from study.train.loop import train_trial
from study.tune.storage import Retry, StorageError, Store, pull_files, pusher

pytestmark = pytest.mark.slow  # real retries with real back-off waits: the full suite, not the fast lane

QUICK = Retry(attempts=8, first_wait_s=0.2, max_wait_s=2.0)


def test_uploads_and_downloads_succeed_through_errors_and_cut_downloads(flaky_s3, tmp_path: Path) -> None:
    uri, faults = flaky_s3
    store = Store(uri, retry=QUICK)
    files = {f"run/trials/t{i}/checkpoint.pt": os.urandom(300_000 + i) for i in range(4)}
    for rel, data in files.items():
        (tmp_path / "src").write_bytes(data)
        store.put(tmp_path / "src", "setup-" + rel)  # the objects to read exist before the faults
    faults.set(rate=0.4, kinds=("503", "500", "cut"), seed=1)
    for rel, data in files.items():
        (tmp_path / "src").write_bytes(data)
        store.put(tmp_path / "src", rel)
        assert store.get("setup-" + rel, tmp_path / "back") and (tmp_path / "back").read_bytes() == data
    store.write_text("run/study.yaml", "name: run\n")
    assert store.read_text("run/study.yaml") == "name: run\n"
    assert store.listdir("run/trials") == ["t0", "t1", "t2", "t3"]
    store.delete("run/trials/t0/checkpoint.pt")
    faults.set(rate=0.0)
    assert not store.exists("run/trials/t0/checkpoint.pt")
    for rel, data in list(files.items())[1:]:
        assert store.get(rel, tmp_path / "back") and (tmp_path / "back").read_bytes() == data
    kinds = {kind for kind, _method, _key in faults.injected}
    assert kinds == {"503", "500", "cut"} and sum(faults.injected.values()) >= 20, faults.injected


def test_an_outage_longer_than_the_sdk_retries_is_ridden_out(flaky_s3, tmp_path: Path) -> None:
    """Everything refused for 10 s: pyarrow alone (the SDK's retries) gives up within it; Store's
    backoff outlasts it."""
    uri, faults = flaky_s3
    store = Store(uri, retry=Retry(attempts=6, first_wait_s=1.0, max_wait_s=8.0))
    (tmp_path / "src").write_bytes(b"x" * 100_000)
    store.put(tmp_path / "src", "run/a.pt")
    faults.set(rate=1.0, kinds=("503",))
    threading.Timer(10.0, lambda: faults.set(rate=0.0)).start()
    start = time.monotonic()
    with pytest.raises(OSError, match="SLOW_DOWN|503"):
        with store.fs.open_input_stream(store._path("run/a.pt")) as f:
            f.read()
    sdk_gave_up_after = time.monotonic() - start
    assert sdk_gave_up_after < 10.0
    store.put(tmp_path / "src", "run/b.pt")  # refused at first, through once the outage ends
    assert time.monotonic() - start >= 10.0
    assert store.get("run/b.pt", tmp_path / "back") and (tmp_path / "back").read_bytes() == b"x" * 100_000


def test_after_its_retries_the_error_names_the_operation_and_the_object(flaky_s3, tmp_path: Path) -> None:
    uri, faults = flaky_s3
    store = Store(uri, retry=Retry(attempts=2, first_wait_s=0.1, max_wait_s=0.1))
    (tmp_path / "src").write_bytes(b"state")
    store.put(tmp_path / "src", "run/trials/t/checkpoint.pt")
    faults.set(rate=1.0, kinds=("500",))
    rel = "run/trials/t/checkpoint.pt"
    with pytest.raises(StorageError, match=r"^(upload to|creating the folder of) s3://study/runs/run/trials/t/"
                                           r"checkpoint\.pt\?endpoint_override=.* failed 2 times in \d+ s; "
                                           r"the last error: .*(INTERNAL|HTTP status 500)"):
        store.put(tmp_path / "src", rel)
    with pytest.raises(StorageError, match=r"^looking up s3://study/runs/run/trials/t/checkpoint\.pt.* failed 2 times"):
        store.get(rel, tmp_path / "back")
    assert not (tmp_path / "back").exists()
    faults.set(rate=0.0)
    assert store.read_text(rel) == "state"  # the failed uploads changed nothing


def test_a_reader_sees_the_old_object_or_the_new_one_never_a_part(flaky_s3, tmp_path: Path) -> None:
    uri, faults = flaky_s3
    store = Store(uri, retry=QUICK)
    versions = [bytes([65 + i]) * 6_000_000 for i in range(3)]  # 6 MB: a multipart upload
    (tmp_path / "v0").write_bytes(versions[0])
    store.put(tmp_path / "v0", "run/trials/t/checkpoint.pt")
    seen: set[int] = set()
    bad: list[str] = []
    done = threading.Event()

    def read() -> None:
        reader = Store(uri, retry=QUICK)
        while not done.is_set():
            if reader.get("run/trials/t/checkpoint.pt", tmp_path / "read"):
                data = (tmp_path / "read").read_bytes()
                if data in versions:
                    seen.add(versions.index(data))
                else:
                    bad.append(f"{len(data)} bytes, starting {data[:1]!r}")

    thread = threading.Thread(target=read)
    thread.start()
    faults.set(rate=0.3, kinds=("503", "500"), only="/checkpoint.pt")  # uploads of parts fail too
    try:
        for i in (1, 2, 1, 2):
            (tmp_path / "src").write_bytes(versions[i])
            store.put(tmp_path / "src", "run/trials/t/checkpoint.pt")
    finally:
        done.set()
        thread.join()
    assert bad == [] and seen >= {1, 2}, (bad, seen)
    assert sum(faults.injected.values()) > 0
    assert store.listdir("run/trials/t") == ["checkpoint.pt"]  # nothing left half-way


def test_a_trial_on_flaky_storage_stores_exactly_what_it_trained(flaky_s3, tmp_path: Path,
                                                                  tiny_cfg: StudyConfig, tiny_trial: Trial) -> None:
    uri, faults = flaky_s3
    store = Store(uri, retry=QUICK)
    faults.set(rate=0.3, kinds=("503", "500", "cut"), seed=2)
    work = tmp_path / "node" / "trials"
    out = work / tiny_trial.name()
    row = train_trial(tiny_cfg, tiny_trial, out_dir=out, data_root=tmp_path,
                      sync=pusher(store, work, "run/trials"))
    faults.set(rate=0.0)
    back = tmp_path / "back"
    pull_files(store, f"run/trials/{tiny_trial.name()}", back, layout.RESUME_FILES)
    assert (back / layout.METRICS).read_bytes() == (out / layout.METRICS).read_bytes()
    assert [r["iteration"] for r in layout.read_metrics(back)] == [4, 8]
    assert layout.check_checkpoint(back / layout.CHECKPOINT).iteration == 8
    assert sorted(p.name for p in back.iterdir()) == sorted([layout.CHECKPOINT, layout.CHECKSUMS, layout.METRICS])
    assert sum(faults.injected.values()) > 0
    assert row["status"] == "finished"


def test_a_download_looks_the_object_up_once(flaky_s3, tmp_path: Path) -> None:
    """`Store.get` on S3: one lookup, then pyarrow's own lookup as it opens the object and the
    GET (three requests; it was four while `get` asked whether the object exists and then its
    size); a missing object is two (pyarrow looks for the key, then for a folder of that name)."""
    uri, faults = flaky_s3
    store = Store(uri, QUICK)
    (tmp_path / "a").write_bytes(os.urandom(1000))
    store.put(tmp_path / "a", "f/a.bin")
    before = faults.requests
    assert store.get("f/a.bin", tmp_path / "b") and (tmp_path / "b").read_bytes() == (tmp_path / "a").read_bytes()
    assert faults.requests - before == 3
    before = faults.requests
    assert not store.get("f/missing.bin", tmp_path / "c") and not (tmp_path / "c").exists()
    assert faults.requests - before == 2
