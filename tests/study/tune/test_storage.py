"""study.tune.storage.Store on a folder, on a file:// URI and on S3 (moto's server): the same answers."""

from __future__ import annotations

from pathlib import Path

import pytest

from study.layout import is_uri
from study.tune.storage import Store, fetch_run, pull_files, pusher


@pytest.fixture(params=["folder", "file", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "folder":
        return Store(tmp_path / "store")
    if request.param == "file":
        return Store(f"file://{tmp_path}/store")
    return Store(request.getfixturevalue("s3_uri"))


def test_a_store_reads_back_what_it_was_given(store: Store, tmp_path: Path) -> None:
    assert store.read_text("run/study.yaml") is None and not store.exists("run")
    assert store.listdir("run/trials") == []
    store.write_text("run/study.yaml", "name: x\n")
    src = tmp_path / "local" / "trials" / "a" / "checkpoint.pt"
    src.parent.mkdir(parents=True)
    src.write_bytes(bytes(range(256)) * 4000)  # ~1 MB, binary
    pusher(store, tmp_path / "local" / "trials", "run/trials")(src)
    assert store.read_text("run/study.yaml") == "name: x\n"
    assert store.exists("run/trials/a/checkpoint.pt") and store.listdir("run") == ["study.yaml", "trials"]
    assert store.listdir("run/trials") == ["a"]
    back = tmp_path / "back"
    pull_files(store, "run/trials/a", back, ["checkpoint.pt", "metrics.jsonl"])  # the second is absent
    assert (back / "checkpoint.pt").read_bytes() == src.read_bytes()
    assert sorted(p.name for p in back.iterdir()) == ["checkpoint.pt"]  # no partial or empty files
    assert not store.get("run/nothing", back / "nothing")


def test_uris_keep_their_query_and_paths_stay_paths(tmp_path: Path) -> None:
    assert is_uri("s3://b/runs") and is_uri("file:///tmp/x") and not is_uri("runs")
    assert Store("file:///tmp/x/").uri("run", "tune") == "file:///tmp/x/run/tune"
    s3 = Store("s3://b/runs?endpoint_override=127.0.0.1:9&scheme=http")
    assert s3.uri("run", "tune") == "s3://b/runs/run/tune?endpoint_override=127.0.0.1:9&scheme=http"
    assert Store(tmp_path).uri("run") == f"{tmp_path}/run"


def test_fetch_run_copies_the_results_not_the_checkpoints(store: Store, tmp_path: Path) -> None:
    store.write_text("run/study.yaml", "name: run\n")
    store.write_text("run/trials/t1/metrics.jsonl", '{"iteration": 4}\n')
    store.write_text("run/trials/t1/checkpoint.pt", "big")
    store.write_text("run/trials/t2/failed.txt", "Traceback ...")
    copy = fetch_run(store, "run", tmp_path / "copy")
    assert sorted(str(p.relative_to(copy)) for p in copy.rglob("*") if p.is_file()) == [
        "study.yaml", "trials/t1/metrics.jsonl", "trials/t2/failed.txt"]


def test_a_run_lock_refuses_a_second_holder_until_released(store: Store) -> None:
    from study.errors import ConfigError
    from study.tune.storage import RunLock

    with RunLock(store, "run"):
        with pytest.raises(ConfigError, match=r"--name: .*run\S* is being written by another `study run` "
                                              r"\(.*\"pid\": \d+"):
            RunLock(store, "run").__enter__()
    with RunLock(store, "run"):  # free again once released
        pass


def test_a_lease_on_a_uri_whose_holder_died_is_taken_over(tmp_path: Path) -> None:
    import json
    import time

    from study.tune.storage import RunLock

    store = Store(f"file://{tmp_path}/store")
    store.write_text("run/lock.json", json.dumps({"host": "gone", "pid": 1, "renewed": time.time() - 600}))
    with RunLock(store, "run", stale_s=90):
        assert json.loads(store.read_text("run/lock.json"))["host"] != "gone"
    assert not store.exists("run/lock.json")  # released


def test_a_file_renamed_locally_is_copied_on_the_server_not_uploaded_again(store: Store, tmp_path: Path) -> None:
    import os

    local = tmp_path / "local"
    local.mkdir()
    push = pusher(store, local, "run")
    (local / "checkpoint.pt").write_bytes(b"state at 4")
    push(local / "checkpoint.pt")
    os.replace(local / "checkpoint.pt", local / "checkpoint.prev.pt")
    uploads: list[str] = []
    put = store.put
    store.put = lambda src, rel: (uploads.append(rel), put(src, rel))[1]  # type: ignore[method-assign]
    push(local / "checkpoint.prev.pt")
    (local / "checkpoint.pt").write_bytes(b"state at 8")
    push(local / "checkpoint.pt")
    assert store.read_text("run/checkpoint.prev.pt") == "state at 4"
    assert store.read_text("run/checkpoint.pt") == "state at 8"
    assert uploads == (["run/checkpoint.pt"] if store.remote else ["run/checkpoint.prev.pt", "run/checkpoint.pt"])
    (local / "checkpoint.prev.pt").unlink()
    push(local / "checkpoint.prev.pt")  # gone locally: gone from the store
    assert not store.exists("run/checkpoint.prev.pt")
