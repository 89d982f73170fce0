"""Dataset catalogue and mirror download, against real HTTP servers on 127.0.0.1 and real directories."""
from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import json
import socket
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from conftest import synthetic_images
from ganops.data.datasets import (
    CATALOGUE,
    DATASETS,
    FILE_NAMES,
    DatasetError,
    DatasetSpec,
    DownloadError,
    FileSpec,
    MirrorFailure,
    dataset_spec,
    download,
    fetch,
    verify,
)
from ganops.data.idx import encode
from ganops.params import DataParams

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


def synthetic_files() -> dict[str, bytes]:
    """The four decompressed IDX files of a small synthetic dataset."""
    train, test = synthetic_images(40, 0), synthetic_images(20, 1)
    return {
        FILE_NAMES[0]: encode(train[0]), FILE_NAMES[1]: encode(train[1]),
        FILE_NAMES[2]: encode(test[0]), FILE_NAMES[3]: encode(test[1]),
    }


def official_gz(blob: bytes) -> bytes:
    return gzip.compress(blob, compresslevel=9, mtime=0)


def make_spec(mirrors: tuple[str, ...] = (), *, pin: str = "sha256") -> DatasetSpec:
    """A catalogue entry for the synthetic files, pinned like fashion-mnist (sha256) or mnist (md5)."""
    files = []
    for name, blob in synthetic_files().items():
        if pin == "sha256":
            files.append(FileSpec(name, hashlib.sha256(blob).hexdigest(), len(blob)))
        else:
            files.append(FileSpec(name, size=len(blob), gz_md5=hashlib.md5(official_gz(blob)).hexdigest()))
    return DatasetSpec(name="synthetic", files=tuple(files), mirrors=mirrors, classes=None,
                       fix="add a mirror to data.mirrors in params.yaml")


def make_mirror(directory: Path, *, compress=official_gz) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, blob in synthetic_files().items():
        if compress is None:
            (directory / name).write_bytes(blob)
        else:
            (directory / f"{name}.gz").write_bytes(compress(blob))
    return directory


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        pass  # a client that timed out and hung up is expected here, not worth a traceback


class _Handler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:
        server = self.server
        with server.lock:
            server.paths.append(self.path)
            fail = server.failures_left > 0
            server.failures_left -= fail
        if fail:
            self.send_error(503)
            return
        if self.path.startswith("/slow/"):
            time.sleep(1.0)
        super().do_GET()


@contextlib.contextmanager
def http_server(directory: Path, *, failures: int = 0):
    """A real HTTP server on 127.0.0.1 serving `directory`; the first `failures` requests get 503."""
    server = _Server(("127.0.0.1", 0), functools.partial(_Handler, directory=str(directory)))
    server.lock = threading.Lock()
    server.paths = []
    server.failures_left = failures
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield server, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def fast(**overrides) -> dict:
    options = dict(connect_timeout_s=2.0, read_timeout_s=5.0, retries=2, backoff_s=0.01)
    options.update(overrides)
    return options


def assert_no_output(out: Path) -> None:
    assert not out.exists()
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")] == []


def assert_downloaded(out: Path) -> dict:
    for name, blob in synthetic_files().items():
        assert (out / name).read_bytes() == blob  # stored decompressed
    sources = json.loads((out / "sources.json").read_text())
    assert sorted(p.name for p in out.iterdir()) == sorted([*FILE_NAMES, "sources.json"])
    return sources


# --- the verification rule ----------------------------------------------------------------------

SHA_SPEC = FileSpec("f", sha256="a" * 64, size=10, gz_md5="b" * 32)
MD5_SPEC = FileSpec("f", size=10, gz_md5="b" * 32)


@pytest.mark.parametrize(
    "spec, served_gz, gz_md5, sha256, size, outcome",
    [
        (SHA_SPEC, True, "b" * 32, "a" * 64, 10, "sha256"),  # the official .gz
        (SHA_SPEC, True, "c" * 32, "a" * 64, 10, "sha256"),  # re-compressed: content decides
        (SHA_SPEC, False, None, "a" * 64, 10, "sha256"),  # served uncompressed
        (SHA_SPEC, True, "b" * 32, "d" * 64, 10, "checksum mismatch: SHA-256"),
        (SHA_SPEC, True, "b" * 32, "a" * 64, 9, "checksum mismatch: decompressed size 9"),
        (MD5_SPEC, True, "b" * 32, "d" * 64, 10, "md5"),  # official .gz, content hash unknown
        (MD5_SPEC, True, "c" * 32, "d" * 64, 10, "a re-compressed copy cannot be verified"),
        (MD5_SPEC, False, None, "d" * 64, 10, "cannot verify an uncompressed copy"),
        (FileSpec("f"), False, None, "d" * 64, 10, "none"),  # idx: nothing pinned
    ],
)
def test_verification_rule(spec, served_gz, gz_md5, sha256, size, outcome):
    if outcome in ("sha256", "md5", "none"):
        assert verify(spec, served_gz=served_gz, gz_md5=gz_md5, sha256=sha256, size=size) == outcome
    else:
        with pytest.raises(MirrorFailure, match=outcome):
            verify(spec, served_gz=served_gz, gz_md5=gz_md5, sha256=sha256, size=size)


def test_catalogue():
    assert DATASETS == ("fashion-mnist", "mnist", "kmnist", "idx", "folder")
    assert DATASETS == (*CATALOGUE, "idx", "folder")  # params' list, checked against the catalogue it names
    fashion = CATALOGUE["fashion-mnist"]
    assert fashion.mirrors[0] == str(FASHION_DIR)
    assert all(m.startswith("https://") or m.startswith("http://") for m in fashion.mirrors[1:])
    assert {f.name: f.size for f in fashion.files} == {
        "train-images-idx3-ubyte": 47040016, "train-labels-idx1-ubyte": 60008,
        "t10k-images-idx3-ubyte": 7840016, "t10k-labels-idx1-ubyte": 10008,
    }
    for name in ("fashion-mnist", "mnist", "kmnist"):
        spec = CATALOGUE[name]
        assert tuple(f.name for f in spec.files) == FILE_NAMES
        assert len(spec.classes) == 10 and all(len(f.gz_md5) == 32 for f in spec.files)
        assert all((f.sha256 is None) == (name != "fashion-mnist") for f in spec.files)
    assert "apt-get install dataset-fashion-mnist" in fashion.fix


def test_unknown_dataset_and_bad_params(tmp_path):
    with pytest.raises(DatasetError, match=r"unknown dataset 'cifar10' in data.dataset of params.yaml: "
                                           r"choose one of fashion-mnist, mnist, kmnist, idx"):
        dataset_spec("cifar10")
    with pytest.raises(DatasetError, match="data.idx_dir is empty: set data.idx_dir in params.yaml"):
        dataset_spec("idx")  # a direct API call; params.yaml is checked at parse (test_params)
    with pytest.raises(DatasetError, match=r"'ftp://host/x' in data.mirrors .* neither a local directory"):
        download(spec=make_spec(), out_dir=tmp_path / "raw", mirrors=("ftp://host/x",), **fast())
    assert_no_output(tmp_path / "raw")


# --- mirrors --------------------------------------------------------------------------------------

def test_http_falls_back_past_a_closed_port_and_a_404(tmp_path):
    make_mirror(tmp_path / "www" / "good")
    dead = closed_port_url()
    with http_server(tmp_path / "www") as (server, url):
        spec = make_spec((f"{url}/missing/", f"{url}/good/"))
        sources = download(spec=spec, out_dir=tmp_path / "raw", mirrors=(dead,), **fast())
    assert sources == assert_downloaded(tmp_path / "raw")
    assert sources["dataset"] == "synthetic" and sources["classes"] is None
    for name, blob in synthetic_files().items():
        entry = sources["files"][name]
        assert entry["source"] == f"{url}/good/{name}.gz"
        assert entry["verified"] == "sha256"
        assert entry["sha256"] == hashlib.sha256(blob).hexdigest() and entry["bytes"] == len(blob)
        assert entry["gz_md5"] == hashlib.md5(official_gz(blob)).hexdigest()
    # each file: the 404 mirror is asked for name.gz then name, then the good one for name.gz
    expected = []
    for name in FILE_NAMES:
        expected += [f"/missing/{name}.gz", f"/missing/{name}", f"/good/{name}.gz"]
    assert server.paths == expected


def test_http_retries_with_backoff(tmp_path):
    make_mirror(tmp_path / "www")
    with http_server(tmp_path / "www", failures=2) as (server, url):
        download(spec=make_spec((url,)), out_dir=tmp_path / "raw", **fast(retries=3))
    assert_downloaded(tmp_path / "raw")
    assert server.paths[:3] == [f"/{FILE_NAMES[0]}.gz"] * 3  # 503, 503, then served
    assert len(server.paths) == 3 + 3


def test_every_mirror_failing_gives_one_error_and_keeps_old_output(tmp_path):
    out = tmp_path / "raw"
    out.mkdir()
    (out / "old").write_text("previous download")
    (tmp_path / "www").mkdir()
    dead = closed_port_url()
    with http_server(tmp_path / "www", failures=100) as (server, url):
        with pytest.raises(DownloadError) as info:
            download(spec=make_spec((dead, f"{url}/", str(tmp_path / "nowhere"))), out_dir=out,
                     **fast(retries=2))
    message = str(info.value)
    assert message.startswith(f"could not get synthetic file {FILE_NAMES[0]} from any mirror:\n")
    lines = message.splitlines()
    assert lines[1].startswith(f"  - {dead}: {dead}{FILE_NAMES[0]}.gz: ConnectionError: ")
    assert lines[1].endswith("Connection refused (after 2 attempts)")
    assert lines[2] == f"  - {url}/: {url}/{FILE_NAMES[0]}.gz: HTTP 503 (after 2 attempts)"
    assert lines[3] == f"  - {tmp_path / 'nowhere'}: no such directory"
    assert lines[4] == "Fix: add a mirror to data.mirrors in params.yaml"
    assert len(lines) == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw", "www"]
    assert (out / "old").read_text() == "previous download"


def test_read_timeout_is_retried_then_reported(tmp_path):
    make_mirror(tmp_path / "www" / "slow")
    with http_server(tmp_path / "www") as (server, url):
        with pytest.raises(DownloadError, match=r"ReadTimeout.*\(after 2 attempts\)"):
            download(spec=make_spec((f"{url}/slow/",)), out_dir=tmp_path / "raw",
                     **fast(read_timeout_s=0.2, retries=2))
    assert server.paths == [f"/slow/{FILE_NAMES[0]}.gz"] * 2
    assert_no_output(tmp_path / "raw")


def test_corrupted_and_truncated_gzip(tmp_path):
    corrupt = make_mirror(tmp_path / "corrupt")
    blob = bytearray((corrupt / f"{FILE_NAMES[0]}.gz").read_bytes())
    blob[200:240] = bytes(40)
    (corrupt / f"{FILE_NAMES[0]}.gz").write_bytes(bytes(blob))
    with pytest.raises(DownloadError, match=rf"  - {corrupt}: {corrupt}/{FILE_NAMES[0]}.gz: corrupted gzip \(Error -3"):
        download(spec=make_spec((str(corrupt),)), out_dir=tmp_path / "raw", **fast())
    assert_no_output(tmp_path / "raw")

    truncated = make_mirror(tmp_path / "truncated")
    name = f"{FILE_NAMES[1]}.gz"
    (truncated / name).write_bytes((truncated / name).read_bytes()[:-30])
    with http_server(truncated) as (_, url):
        with pytest.raises(DownloadError, match=rf"{FILE_NAMES[1]} from any mirror:\n  - {url}: {url}/{name}: "
                                                r"corrupted gzip \(truncated: the stream ends before its end marker\)"):
            download(spec=make_spec((url,)), out_dir=tmp_path / "raw", **fast())
    assert_no_output(tmp_path / "raw")


def test_checksum_mismatch(tmp_path):
    wrong = make_mirror(tmp_path / "wrong")
    other = encode(synthetic_images(40, 7)[1])  # right size, other labels
    (wrong / f"{FILE_NAMES[1]}.gz").write_bytes(official_gz(other))
    with pytest.raises(DownloadError, match=rf"{FILE_NAMES[1]} from any mirror:\n  - {wrong}: {wrong}/{FILE_NAMES[1]}.gz: "
                                            rf"checksum mismatch: SHA-256 {hashlib.sha256(other).hexdigest()}"):
        download(spec=make_spec((str(wrong),)), out_dir=tmp_path / "raw", **fast())
    assert_no_output(tmp_path / "raw")


def test_md5_only_dataset_rejects_a_recompressed_mirror(tmp_path):
    """mnist/kmnist: a re-compressed copy fails, the official .gz on the next mirror verifies by MD5."""
    recompressed = make_mirror(tmp_path / "recompressed", compress=lambda b: gzip.compress(b, 1, mtime=5))
    official = make_mirror(tmp_path / "official")
    sources = download(spec=make_spec((str(recompressed), str(official)), pin="md5"),
                       out_dir=tmp_path / "raw", **fast())
    assert_downloaded(tmp_path / "raw")
    assert {f["verified"] for f in sources["files"].values()} == {"md5"}
    assert all(f["source"].startswith(str(official)) for f in sources["files"].values())
    with pytest.raises(DownloadError, match="a re-compressed copy cannot be verified"):
        download(spec=make_spec((str(recompressed),), pin="md5"), out_dir=tmp_path / "raw2", **fast())
    assert_no_output(tmp_path / "raw2")


def test_sha256_pinned_dataset_accepts_recompressed_and_plain_files(tmp_path):
    recompressed = make_mirror(tmp_path / "recompressed", compress=lambda b: gzip.compress(b, 1, mtime=5))
    plain = make_mirror(tmp_path / "plain", compress=None)
    for mirror in (recompressed, plain):
        out = tmp_path / f"raw-{mirror.name}"
        sources = download(spec=make_spec((str(mirror),)), out_dir=out, **fast())
        assert_downloaded(out)
        assert {f["verified"] for f in sources["files"].values()} == {"sha256"}
    assert (tmp_path / "raw-plain" / "sources.json").read_text().count('"gz_md5": null') == 4


def test_idx_dataset_reads_mixed_gz_and_plain_files(tmp_path):
    idx_dir = tmp_path / "mine"
    idx_dir.mkdir()
    for i, (name, blob) in enumerate(synthetic_files().items()):
        if i % 2:
            (idx_dir / name).write_bytes(blob)
        else:
            (idx_dir / f"{name}.gz").write_bytes(official_gz(blob))
    sources = fetch(params=DataParams(dataset="idx", idx_dir=str(idx_dir), mirrors=("/ignored",)),
                    out_dir=tmp_path / "raw")
    assert_downloaded(tmp_path / "raw")
    assert sources["dataset"] == "idx" and sources["classes"] is None
    assert {f["verified"] for f in sources["files"].values()} == {"none"}


def test_empty_idx_directory(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DownloadError) as info:
        fetch(params=DataParams(dataset="idx", idx_dir=str(tmp_path / "empty")), out_dir=tmp_path / "raw")
    assert str(info.value) == (
        f"could not get idx file train-images-idx3-ubyte from any mirror:\n"
        f"  - {tmp_path / 'empty'}: has neither train-images-idx3-ubyte.gz nor train-images-idx3-ubyte\n"
        f"Fix: put the four IDX files (train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], "
        f"t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]) in {tmp_path / 'empty'}, "
        f"or point data.idx_dir in params.yaml at the directory that holds them"
    )
    assert_no_output(tmp_path / "raw")


@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_debian_fashion_mnist_labels_verify_against_the_pinned_sha256(tmp_path):
    labels = tuple(f for f in CATALOGUE["fashion-mnist"].files if "labels" in f.name)
    spec = DatasetSpec(name="fashion-mnist", files=labels, mirrors=(str(FASHION_DIR),), classes=None, fix="")
    sources = download(spec=spec, out_dir=tmp_path / "raw", **fast())
    for f in labels:
        entry = sources["files"][f.name]
        assert entry["verified"] == "sha256" and entry["sha256"] == f.sha256
        assert entry["gz_md5"] != f.gz_md5  # Debian re-compressed it: only the content hash can verify
        train = np.frombuffer((tmp_path / "raw" / f.name).read_bytes()[8:], np.uint8)
        assert np.bincount(train).tolist() == [len(train) // 10] * 10
