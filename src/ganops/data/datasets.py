"""Dataset catalogue and mirror download: fetch the four IDX files, verify them, write data/raw atomically.

Datasets: fashion-mnist (default), mnist, kmnist, and idx (your own IDX files in `data.idx_dir`).
Each file of a built-in dataset is tried on the user's mirrors (`data.mirrors`), then on the built-in
ones, in order. A mirror is a local directory or an http(s) base URL holding `<name>.gz` or `<name>`.
HTTP is streamed with connect/read timeouts; connection errors, timeouts and HTTP 5xx/429 are retried
up to `retries` attempts per mirror, waiting backoff_s, 2*backoff_s, ... between attempts.

Verification rule (per file, on the bytes the mirror served):
  1. If the SHA-256 of the *decompressed* content is pinned, it decides: match -> accepted, no match
     -> rejected. This holds whatever gzip produced the .gz, so re-compressed mirrors (Debian's
     dataset-fashion-mnist) verify. The pinned size is checked too.
  2. Otherwise (mnist, kmnist: only the MD5 of the official .gz is published) the served file must be
     a .gz whose MD5 equals the published one. A re-compressed or uncompressed copy cannot be
     verified and is rejected, with a message saying so.
  3. The idx dataset has nothing pinned: its files are accepted as given and their SHA-256 recorded.
A rejected file makes that mirror fail for that file; the next mirror is tried. When every mirror
fails, one DownloadError lists each mirror and why, and says how to fix it.

Output layout (data/raw, which appears whole or not at all): the four files *decompressed*
(train-images-idx3-ubyte, ...), so their SHA-256 is the pinned one whichever mirror served them, plus
sources.json: {"dataset", "classes", "files": {name: {"sha256", "bytes", "source", "gz_md5",
"verified"}}}, where "verified" is "sha256", "md5" or "none".
"""
from __future__ import annotations

import hashlib
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import requests
from tqdm import tqdm

from ganops.data.folder import scan
from ganops.fileio import atomic_dir, write_json
from ganops.params import DATASETS, DataParams

FILE_NAMES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
CHUNK = 1 << 16


class DatasetError(ValueError):
    """data.dataset / data.idx_dir / data.mirrors in params.yaml name something unusable."""


class DownloadError(RuntimeError):
    """No mirror served a verified copy of a file."""


class MirrorFailure(Exception):
    """One mirror failed for one file; `retryable` says whether another attempt might succeed."""

    def __init__(self, reason: str, *, retryable: bool = False, unreachable: bool = False,
                 missing: bool = False):
        super().__init__(reason)
        self.retryable = retryable
        self.missing = missing  # HTTP 404: the mirror lacks this name
        self.unreachable = unreachable  # skip this mirror for the remaining files


@dataclass(frozen=True)
class FileSpec:
    name: str
    sha256: str | None = None  # of the decompressed content
    size: int | None = None  # decompressed bytes
    gz_md5: str | None = None  # of the official .gz


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    files: tuple[FileSpec, ...]
    mirrors: tuple[str, ...]
    classes: tuple[str, ...] | None  # None: class count inferred from the labels (idx)
    fix: str  # what to do when every mirror fails


_FIX_MIRROR = (
    "add a mirror holding the files (a local directory or an http(s) base URL) to data.mirrors "
    "in params.yaml"
)

CATALOGUE: dict[str, DatasetSpec] = {
    "fashion-mnist": DatasetSpec(
        name="fashion-mnist",
        files=(
            FileSpec("train-images-idx3-ubyte",
                     "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888", 47040016,
                     "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
            FileSpec("train-labels-idx1-ubyte",
                     "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9", 60008,
                     "25c81989df183df01b3e8a0aad5dffbe"),
            FileSpec("t10k-images-idx3-ubyte",
                     "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b", 7840016,
                     "bef4ecab320f06d8554ea6380940ec79"),
            FileSpec("t10k-labels-idx1-ubyte",
                     "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34", 10008,
                     "bb300cfdad3c16e7a12a480ee83cd310"),
        ),
        mirrors=(
            "/usr/share/datasets/fashion-mnist",  # Debian/Ubuntu package dataset-fashion-mnist
            "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        ),
        classes=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                 "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        fix=f"{_FIX_MIRROR}; on Debian/Ubuntu: apt-get install dataset-fashion-mnist",
    ),
    "mnist": DatasetSpec(
        name="mnist",
        files=(
            FileSpec("train-images-idx3-ubyte", size=47040016, gz_md5="f68b3c2dcbeaaa9fbdd348bbdeb94873"),
            FileSpec("train-labels-idx1-ubyte", size=60008, gz_md5="d53e105ee54ea40749a09fcbcd1e9432"),
            FileSpec("t10k-images-idx3-ubyte", size=7840016, gz_md5="9fb629c4189551a2d022fa330f9573f3"),
            FileSpec("t10k-labels-idx1-ubyte", size=10008, gz_md5="ec29112dd5afa0611ce80d1b7f02629c"),
        ),
        mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
        classes=tuple(str(d) for d in range(10)),
        fix=f"{_FIX_MIRROR} (it must serve the official .gz files: only their MD5s are published)",
    ),
    "kmnist": DatasetSpec(
        name="kmnist",
        files=(
            FileSpec("train-images-idx3-ubyte", size=47040016, gz_md5="bdb82020997e1d708af4cf47b453dcf7"),
            FileSpec("train-labels-idx1-ubyte", size=60008, gz_md5="e144d726b3acfaa3e44228e80efcd344"),
            FileSpec("t10k-images-idx3-ubyte", size=7840016, gz_md5="5c965bf0a639b31b8f53240b1b52f4d7"),
            FileSpec("t10k-labels-idx1-ubyte", size=10008, gz_md5="7320c461ea6c1c855c0b718fb2a4b134"),
        ),
        mirrors=("http://codh.rois.ac.jp/kmnist/dataset/kmnist/",),
        classes=("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),
        fix=f"{_FIX_MIRROR} (it must serve the official .gz files: only their MD5s are published)",
    ),
}


def dataset_spec(name: str, *, idx_dir: str = "") -> DatasetSpec:
    """The catalogue entry of `name`; for "idx", a spec whose one mirror is `idx_dir`."""
    if name == "idx":
        if not idx_dir:
            raise DatasetError(
                "data.dataset is 'idx' but data.idx_dir is empty: set data.idx_dir in params.yaml to "
                "the directory holding train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], "
                "t10k-images-idx3-ubyte[.gz] and t10k-labels-idx1-ubyte[.gz]"
            )
        return DatasetSpec(
            name="idx",
            files=tuple(FileSpec(n) for n in FILE_NAMES),
            mirrors=(idx_dir,),
            classes=None,
            fix=f"put the four IDX files ({', '.join(n + '[.gz]' for n in FILE_NAMES)}) in {idx_dir}, "
            "or point data.idx_dir in params.yaml at the directory that holds them",
        )
    if name not in CATALOGUE:
        raise DatasetError(
            f"unknown dataset {name!r} in data.dataset of params.yaml: choose one of {', '.join(DATASETS)}"
        )
    return CATALOGUE[name]


def _is_url(mirror: str) -> bool:
    return mirror.startswith(("http://", "https://"))


def _check_mirror(mirror: str) -> None:
    if "://" in mirror and not _is_url(mirror):
        raise DatasetError(
            f"mirror {mirror!r} in data.mirrors of params.yaml is neither a local directory nor an "
            "http(s) base URL: use a path or an http:// / https:// URL"
        )


def verify(spec: FileSpec, *, served_gz: bool, gz_md5: str | None, sha256: str, size: int) -> str:
    """Apply the module's verification rule; return how the file was verified or raise MirrorFailure."""
    if spec.size is not None and size != spec.size:
        raise MirrorFailure(
            f"checksum mismatch: decompressed size {size} bytes, expected {spec.size} (truncated or wrong file)"
        )
    if spec.sha256 is not None:
        if sha256 != spec.sha256:
            raise MirrorFailure(f"checksum mismatch: SHA-256 {sha256}, expected {spec.sha256}")
        return "sha256"
    if spec.gz_md5 is not None:
        if not served_gz:
            raise MirrorFailure(
                "cannot verify an uncompressed copy: no SHA-256 of the content is pinned, only the "
                f"MD5 of the official .gz ({spec.gz_md5})"
            )
        if gz_md5 != spec.gz_md5:
            raise MirrorFailure(
                f"checksum mismatch: .gz MD5 {gz_md5}, published {spec.gz_md5}; a re-compressed copy "
                "cannot be verified (no SHA-256 of the content is pinned)"
            )
        return "md5"
    return "none"


class _Sink:
    """Writes fetched bytes to `path`, gunzipping on the fly when `gz`; hashes both sides."""

    def __init__(self, path: Path, *, gz: bool):
        self.path = path
        self.gz = gz
        self.md5 = hashlib.md5(usedforsecurity=False) if gz else None
        self.sha256 = hashlib.sha256()
        self.size = 0
        self._file = open(path, "wb")
        self._inflate = zlib.decompressobj(wbits=31) if gz else None

    def write(self, chunk: bytes) -> None:
        if self.gz:
            self.md5.update(chunk)
            data = b""
            try:
                while chunk:
                    if self._inflate.eof:  # a multi-member gzip: the next member starts here
                        self._inflate = zlib.decompressobj(wbits=31)
                    data += self._inflate.decompress(chunk)
                    chunk = self._inflate.unused_data
            except zlib.error as e:
                raise MirrorFailure(f"corrupted gzip ({e})") from e
        else:
            data = chunk
        self.sha256.update(data)
        self.size += len(data)
        self._file.write(data)

    def close(self) -> None:
        self._file.close()

    def finish(self) -> None:
        """Close; raise MirrorFailure when a gzip stream ended early."""
        self.close()
        if self.gz and not self._inflate.eof:
            raise MirrorFailure("corrupted gzip (truncated: the stream ends before its end marker)")


def _copy_local(mirror: str, spec: FileSpec, dest: Path) -> tuple[_Sink, str]:
    directory = Path(mirror).expanduser()
    if not directory.is_dir():
        raise MirrorFailure("no such directory", unreachable=True)
    for candidate, gz in ((directory / f"{spec.name}.gz", True), (directory / spec.name, False)):
        if candidate.is_file():
            sink = _Sink(dest, gz=gz)
            try:
                with open(candidate, "rb") as f, _bar(spec.name, candidate.stat().st_size) as bar:
                    while block := f.read(CHUNK):
                        sink.write(block)
                        bar.update(len(block))
                sink.finish()
            except MirrorFailure as failure:
                raise MirrorFailure(f"{candidate}: {failure}") from failure
            finally:
                sink.close()
            return sink, str(candidate)
    raise MirrorFailure(f"has neither {spec.name}.gz nor {spec.name}")


def _bar(name: str, total: int | None) -> tqdm:
    return tqdm(total=total, desc=name, unit="B", unit_scale=True, unit_divisor=1024,
                file=sys.stderr, mininterval=0.5, leave=False)


def _get_once(url: str, dest: Path, *, gz: bool, name: str, timeout: tuple[float, float]) -> _Sink:
    try:
        with requests.get(url, stream=True, timeout=timeout) as response:
            status = response.status_code
            if status != 200:
                raise MirrorFailure(f"HTTP {status}", retryable=status >= 500 or status == 429,
                                    missing=status == 404)
            total = response.headers.get("Content-Length")
            sink = _Sink(dest, gz=gz)
            try:
                with _bar(name, int(total) if total and total.isdigit() else None) as bar:
                    for block in response.iter_content(CHUNK):
                        sink.write(block)
                        bar.update(len(block))
            finally:
                sink.close()
            sink.finish()
            return sink
    except (requests.ConnectionError, requests.Timeout) as e:
        raise MirrorFailure(_why(e), retryable=True, unreachable=True) from e
    except requests.RequestException as e:  # e.g. a body cut short (ChunkedEncodingError)
        raise MirrorFailure(_why(e), retryable=True) from e


def _why(error: Exception) -> str:
    """A one-line reason from a requests error: its root cause without urllib3's object reprs."""
    cause = error.args[0] if error.args else error
    cause = getattr(cause, "reason", cause)  # urllib3's MaxRetryError wraps the real reason
    text = str(cause).split(">: ")[-1].splitlines()[0] if str(cause) else ""
    return f"{type(error).__name__}: {text[:200]}"


def _get_http(mirror: str, spec: FileSpec, dest: Path, *, timeout: tuple[float, float],
              retries: int, backoff_s: float) -> tuple[_Sink, str]:
    base = mirror.rstrip("/") + "/"
    misses = []
    for candidate, gz in ((f"{spec.name}.gz", True), (spec.name, False)):
        url = base + candidate
        for attempt in range(retries):
            try:
                return _get_once(url, dest, gz=gz, name=spec.name, timeout=timeout), url
            except MirrorFailure as failure:
                if not failure.retryable:
                    if failure.missing:
                        break  # try the uncompressed name
                    raise MirrorFailure(f"{url}: {failure}") from failure
                if attempt + 1 == retries:
                    raise MirrorFailure(
                        f"{url}: {failure} (after {retries} attempt{'s' * (retries > 1)})",
                        unreachable=failure.unreachable,
                    ) from failure
                time.sleep(backoff_s * 2**attempt)
        misses.append(url)
    raise MirrorFailure(f"HTTP 404 for {' and '.join(misses)}")


def _fetch_file(spec: FileSpec, mirror: str, dest: Path, *, timeout: tuple[float, float],
                retries: int, backoff_s: float) -> dict:
    """Fetch one file from one mirror into `dest` (decompressed) and verify it, or raise MirrorFailure."""
    try:
        if _is_url(mirror):
            sink, source = _get_http(mirror, spec, dest, timeout=timeout, retries=retries, backoff_s=backoff_s)
        else:
            sink, source = _copy_local(mirror, spec, dest)
        gz_md5 = sink.md5.hexdigest() if sink.gz else None
        sha256 = sink.sha256.hexdigest()
        try:
            how = verify(spec, served_gz=sink.gz, gz_md5=gz_md5, sha256=sha256, size=sink.size)
        except MirrorFailure as failure:
            raise MirrorFailure(f"{source}: {failure}") from failure
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    return {"sha256": sha256, "bytes": sink.size, "source": source, "gz_md5": gz_md5, "verified": how}


def download(*, spec: DatasetSpec, out_dir: str | Path, mirrors: tuple[str, ...] = (),
             connect_timeout_s: float = 10.0, read_timeout_s: float = 30.0, retries: int = 3,
             backoff_s: float = 1.0) -> dict:
    """Fetch every file of `spec` from `mirrors` then spec.mirrors; write `out_dir` whole; return sources.

    Raises DownloadError (listing each mirror and why it failed) when a file has no good mirror.
    """
    order = tuple(dict.fromkeys((*mirrors, *spec.mirrors)))  # in order, without duplicates
    for mirror in order:
        _check_mirror(mirror)
    if retries < 1:
        raise DatasetError(f"data.retries must be at least 1 (attempts per mirror), got {retries}")
    timeout = (connect_timeout_s, read_timeout_s)
    files: dict[str, dict] = {}
    unreachable: dict[str, str] = {}  # mirror -> why; not retried for later files
    with atomic_dir(out_dir) as tmp:
        for file_spec in spec.files:
            why: list[str] = []
            for mirror in order:
                if mirror in unreachable:
                    why.append(f"  - {mirror}: skipped, unreachable for an earlier file ({unreachable[mirror]})")
                    continue
                try:
                    files[file_spec.name] = _fetch_file(
                        file_spec, mirror, tmp / file_spec.name,
                        timeout=timeout, retries=retries, backoff_s=backoff_s,
                    )
                    break
                except MirrorFailure as failure:
                    why.append(f"  - {mirror}: {failure}")
                    if failure.unreachable:
                        unreachable[mirror] = str(failure)
            else:
                raise DownloadError(
                    f"could not get {spec.name} file {file_spec.name} from any mirror:\n"
                    + "\n".join(why) + f"\nFix: {spec.fix}"
                )
        sources = {
            "dataset": spec.name,
            "classes": list(spec.classes) if spec.classes is not None else None,
            "files": files,
        }
        write_json(tmp / "sources.json", sources)
    return sources


def inventory_folder(*, folder: str | Path, out_dir: str | Path) -> dict:
    """The download stage of dataset "folder": the folder's inventory (every image's path, label and
    SHA-256) as out_dir/sources.json. The images stay where they are; prepare decodes them and checks
    each against its SHA-256 here, so data/raw changes exactly when the folder's content does."""
    inventory = scan(folder)
    sources = {"dataset": "folder", "folder": str(folder), "classes": list(inventory.classes or []) or None,
               "inventory": inventory.to_json()}
    with atomic_dir(out_dir) as tmp:
        write_json(tmp / "sources.json", sources)
    return sources


def fetch(*, params: DataParams, out_dir: str | Path) -> dict:
    """The download stage: resolve `params.dataset` and download it into `out_dir` (see `download`);
    for "folder", inventory the folder instead (`inventory_folder`)."""
    if params.dataset == "folder":
        return inventory_folder(folder=params.folder, out_dir=out_dir)
    spec = dataset_spec(params.dataset, idx_dir=params.idx_dir)
    return download(
        spec=spec,
        out_dir=out_dir,
        mirrors=params.mirrors if spec.name != "idx" else (),  # idx reads data.idx_dir only
        connect_timeout_s=params.connect_timeout_s,
        read_timeout_s=params.read_timeout_s,
        retries=params.retries,
        backoff_s=params.backoff_s,
    )
