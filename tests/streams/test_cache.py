"""The on-disk domain cache (docs/streams.md): integrity check and healing, file modes, stale temporary files,
concurrent writers."""

import hashlib
import logging
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import tta_streams
from tta_streams._seeds import derive_seed
from tta_streams.cache import STALE_TMP_AGE, DomainCache
from tta_streams.corruptions import corrupt

N = 200
CORRUPTION, SEVERITY, SEED = "gaussian_noise", 3, 4


def build(cache_dir) -> list:
    """Iterate a one-domain stream over the first N embedded images; its batches."""
    stream = tta_streams.Stream(
        "fmnist",
        corruptions=[CORRUPTION],
        severities=SEVERITY,
        n_examples=N,
        batch_size=64,
        seed=SEED,
        cache_dir=cache_dir,
    )
    return list(stream)


def expected_domain() -> np.ndarray:
    """The domain computed without the stream or the cache: image i corrupted with index i (docs/corruptions.md)."""
    clean = tta_streams.fashion_mnist().head(N).images
    return corrupt(clean, CORRUPTION, SEVERITY, seed=derive_seed("corrupt", SEED, CORRUPTION, SEVERITY)).numpy()


def served(batches) -> list:
    """The served images as a sorted list of bytes (order-free comparison)."""
    x = torch.cat([(b.x * 255).round().to(torch.uint8) for b in batches]).numpy()
    return sorted(map(bytes, x.reshape(len(x), -1)))


def domain_file(cache_dir):
    (path,) = (cache_dir / "domains").glob("*.npy")
    return path


def damage_in_place(path):
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 16] = bytes(255 - b for b in data[middle : middle + 16])
    path.write_bytes(bytes(data))


def truncate(path):
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)


@pytest.mark.parametrize("damage", [damage_in_place, truncate], ids=["same-size", "truncated"])
def test_a_damaged_cache_file_is_detected_logged_and_rebuilt(tmp_path, caplog, damage):
    expected = expected_domain()
    build(tmp_path)
    path = domain_file(tmp_path)
    size = path.stat().st_size
    damage(path)
    with caplog.at_level(logging.WARNING, logger="tta_streams.cache"):
        batches = build(tmp_path)
    assert served(batches) == sorted(map(bytes, expected.reshape(N, -1)))  # the right images, not the damaged ones
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(path) in warnings[0] and "damaged" in warnings[0]
    # healed on disk: the file holds the domain in index order again, and the next open is silent
    assert path.stat().st_size == size
    assert np.array_equal(np.load(path, allow_pickle=False), expected)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tta_streams.cache"):
        build(tmp_path)
    assert not caplog.records


@pytest.mark.parametrize(
    "spoil, message",
    [
        (lambda record: record.unlink(), "no checksum record"),
        (lambda record: record.write_text("{not json"), "unreadable checksum record"),
    ],
)
def test_a_cache_file_whose_checksum_record_is_missing_or_unreadable_is_rebuilt(tmp_path, caplog, spoil, message):
    build(tmp_path)
    (record,) = (tmp_path / "domains").glob("*.json")
    before = record.read_text()
    spoil(record)
    with caplog.at_level(logging.WARNING, logger="tta_streams.cache"):
        batches = build(tmp_path)
    assert message in caplog.text and str(domain_file(tmp_path)) in caplog.text
    assert record.read_text() == before  # the rebuilt file has the same content, hence the same record
    assert served(batches) == sorted(map(bytes, expected_domain().reshape(N, -1)))


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_cache_files_are_created_with_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        build(tmp_path)
    finally:
        os.umask(old)
    files = list((tmp_path / "domains").iterdir())
    assert sorted(f.suffix for f in files) == [".json", ".npy"]
    for f in files:
        assert f.stat().st_mode & 0o777 == mode, f


WRITER = """
import sys, time
from tta_streams.cache import DomainCache

def fill(out):
    print("filling", flush=True)
    time.sleep(600)

DomainCache(sys.argv[1]).store(sys.argv[2], (4, 1, 2, 2), fill)
"""


def start_writer(root, key):
    """A process that starts writing domain ``key`` and hangs mid-write; returns it and its temporary file."""
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(root), key], stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline().strip() == "filling"
    (tmp,) = (root / "domains").glob(f".{key}.*.tmp")
    return writer, tmp


@pytest.mark.multiprocess
def test_stale_temporary_files_are_removed_and_live_writers_kept(tmp_path):
    killed, killed_tmp = start_writer(tmp_path, "a" * 32)
    live, live_tmp = start_writer(tmp_path, "b" * 32)
    try:
        killed.kill()  # SIGKILL: no chance to clean up
        killed.wait()
        assert killed_tmp.is_file()
        domains = tmp_path / "domains"
        old_unknown = domains / ".cccc.npy.tmp"  # a name without a process id: judged by age alone
        old_unknown.write_bytes(b"x")
        os.utime(old_unknown, (time.time() - STALE_TMP_AGE - 60,) * 2)
        recent_unknown = domains / ".dddd.npy.tmp"
        recent_unknown.write_bytes(b"x")

        cache = DomainCache(tmp_path)
        array = cache.store("e" * 32, (2, 1, 2, 2), lambda out: out.fill(7))
        assert array.shape == (2, 1, 2, 2) and (array == 7).all()
        assert not killed_tmp.exists() and not old_unknown.exists()
        assert live_tmp.is_file() and recent_unknown.is_file()  # a live writer's file is never touched
    finally:
        live.kill()
        live.wait()


SCRIPT = """
import hashlib, sys, tta_streams
stream = tta_streams.Stream("fmnist", corruptions=["gaussian_noise", "contrast"], severities=[3], setting="continual",
                        n_examples=300, batch_size=32, seed=5, cache_dir=sys.argv[1])
digest = hashlib.sha256()
for b in stream:
    digest.update(b.x.numpy().tobytes())
print(digest.hexdigest())
"""


@pytest.mark.multiprocess
def test_concurrent_processes_building_the_same_domains_end_with_one_correct_file_each(tmp_path, caplog):
    runs = [
        subprocess.Popen([sys.executable, "-c", SCRIPT, str(tmp_path)], stdout=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    digests = [run.communicate(timeout=300)[0].strip() for run in runs]
    assert all(run.returncode == 0 for run in runs) and len(set(digests)) == 1
    domains = tmp_path / "domains"
    assert len(list(domains.glob("*.npy"))) == 2 and len(list(domains.glob("*.json"))) == 2
    assert not list(domains.glob(".*"))  # no temporary file left behind
    cache = DomainCache(tmp_path)
    with caplog.at_level(logging.WARNING, logger="tta_streams.cache"):
        for path in domains.glob("*.npy"):
            assert cache.load(path.stem) is not None
    assert not caplog.records  # every file matches its record


BUILDER = """
import hashlib, sys, time
from pathlib import Path
import numpy as np
from tta_streams.cache import DomainCache
root, me = Path(sys.argv[1]), sys.argv[2]

def fill(out):
    out[...] = (np.arange(out.size) % 251).reshape(out.shape)
    (root / f"inside-{me}").touch()  # wait until the other builder is inside its fill too
    deadline = time.monotonic() + 120
    while len(list(root.glob("inside-*"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)

array = DomainCache(root).get_or_create("k", (40, 1, 28, 28), fill)
print(hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest(), (root / f"inside-{me}").exists())
"""


@pytest.mark.multiprocess
def test_two_processes_building_the_same_domain_at_once_both_end_with_the_valid_cached_data(tmp_path, caplog):
    # Both miss the cache and write their own temporary file at the same time (each waits inside its fill
    # for the other), then both rename into place: each gets the data, and the file left matches its record.
    runs = [
        subprocess.Popen([sys.executable, "-c", BUILDER, str(tmp_path), name], stdout=subprocess.PIPE, text=True)
        for name in ("a", "b")
    ]
    printed = [run.communicate(timeout=300)[0].split() for run in runs]
    assert all(run.returncode == 0 for run in runs)
    expected = (np.arange(40 * 28 * 28) % 251).astype(np.uint8).reshape(40, 1, 28, 28)
    assert (
        printed == [[hashlib.sha256(expected.tobytes()).hexdigest(), "True"]] * 2
    )  # both built it, both read it back whole
    with caplog.at_level(logging.WARNING, logger="tta_streams.cache"):
        cached = DomainCache(tmp_path).load("k")
    assert cached is not None and np.array_equal(cached, expected) and not caplog.records
    assert not list((tmp_path / "domains").glob(".*"))  # no temporary file left behind


READER = """
import resource, sys
from tta_streams.cache import DomainCache
size = int(next(l for l in open("/proc/self/status") if l.startswith("VmSize")).split()[1]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (size + (1 << 30),) * 2)  # an unbounded read fails fast, not the machine
print("miss" if DomainCache(sys.argv[1]).load(sys.argv[2]) is None else "hit")
"""


@pytest.mark.parametrize("kind", ["link to /dev/zero", "fifo", "oversized", "directory"])
@pytest.mark.multiprocess
def test_a_checksum_record_that_is_not_a_small_regular_file_is_refused_unread(tmp_path, kind):
    """A shared cache folder can hold anything under a record's name: the reader refuses what is not a
    small regular file (a miss, rebuilt), in bounded memory and without blocking."""
    cache = DomainCache(tmp_path)
    cache.store("k", (2, 1, 2, 2), lambda out: out.fill(7))
    record = cache.record_path("k")
    record.unlink()
    if kind == "link to /dev/zero":
        record.symlink_to("/dev/zero")
    elif kind == "fifo":
        os.mkfifo(record)
    elif kind == "oversized":
        record.write_text(" " * (1 << 20) + "{}")
    else:
        record.mkdir()
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    reader = subprocess.run(
        [sys.executable, "-c", READER, str(tmp_path), "k"], capture_output=True, text=True, timeout=120, env=env
    )
    assert reader.returncode == 0, reader.stderr
    assert reader.stdout.strip() == "miss"
    assert "unreadable checksum record" in reader.stderr and str(record) in reader.stderr
