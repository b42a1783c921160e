"""`q1net data div2k`: fetch the DIV2K high-resolution PNGs, resumably and verified.

The official host publishes no checksums, so an archive counts as complete only
when every member's CRC32 checks out, it holds exactly the expected PNGs and,
where the caller pins one (`--sha256 NAME=HEX`), its SHA-256 matches. The
SHA-256 of each archive is printed so a site can pin it for later downloads.
Partial downloads live in `NAME.part` and continue with an HTTP Range request.
"""

from __future__ import annotations

import hashlib
import shutil
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

DIV2K_BASE_URL = "https://data.vision.ee.ethz.ch/cvl/DIV2K/"
CHUNK = 1 << 20


@dataclass(frozen=True)
class Archive:
    name: str  # file name on the server, also the folder it unpacks to (without .zip)
    numbers: range  # the image numbers it must contain

    @property
    def folder(self) -> str:
        return self.name.removesuffix(".zip")

    def members(self) -> set[str]:
        return {f"{self.folder}/{n:04d}.png" for n in self.numbers}


DIV2K_ARCHIVES = (Archive("DIV2K_train_HR.zip", range(1, 801)), Archive("DIV2K_valid_HR.zip", range(801, 901)))


class DownloadError(Exception):
    pass


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(url: str, destination: Path, timeout: float = 60.0) -> None:
    """Download `url` to `destination`, continuing a `.part` file left by an interrupted run."""
    partial = destination.with_name(destination.name + ".part")
    have = partial.stat().st_size if partial.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code != 416:  # 416: the part file already holds the whole resource
            raise DownloadError(f"{url}: HTTP {error.code} {error.reason}") from None
    except (urllib.error.URLError, OSError) as error:
        raise DownloadError(f"{url}: {error}") from None
    else:
        with response:
            resumed = response.status == 206
            if not resumed:
                have = 0  # the server ignored the range: start over
            length = response.headers.get("Content-Length")
            total = int(length) + have if length is not None else None
            with (
                partial.open("ab" if resumed else "wb") as out,
                tqdm(total=total, initial=have, unit="B", unit_scale=True, desc=destination.name) as bar,
            ):
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    bar.update(len(chunk))
            received = partial.stat().st_size
            if total is not None and received != total:  # the connection dropped: keep the part, resume later
                raise DownloadError(f"{url}: connection closed after {received} of {total} bytes; run again to resume")
    partial.replace(destination)


def verify_archive(path: Path, archive: Archive, sha256: str | None = None) -> str:
    """Check `path` is the whole, intact `archive`; return its SHA-256. Raises DownloadError."""
    digest = sha256_of(path)
    if sha256 and digest != sha256.lower():
        raise DownloadError(f"{path}: SHA-256 {digest} differs from the expected {sha256}")
    try:
        with zipfile.ZipFile(path) as zipped:
            broken = zipped.testzip()
            names = {n for n in zipped.namelist() if not n.endswith("/")}
    except (zipfile.BadZipFile, OSError) as error:
        raise DownloadError(f"{path}: not a readable zip archive ({error})") from None
    if broken:
        raise DownloadError(f"{path}: member {broken} fails its CRC check")
    missing = archive.members() - names
    if missing:
        raise DownloadError(f"{path}: {len(missing)} expected images missing (first: {sorted(missing)[0]})")
    return digest


def download_div2k(root: str | Path, base_url: str | None = None, sha256: dict[str, str] | None = None) -> None:
    """Fill `root` with DIV2K_train_HR/ (0001-0800) and DIV2K_valid_HR/ (0801-0900)."""
    root, base_url, sha256 = Path(root), base_url or DIV2K_BASE_URL, sha256 or {}
    root.mkdir(parents=True, exist_ok=True)
    for archive in DIV2K_ARCHIVES:
        target = root / archive.folder
        if target.is_dir() and all((root / m).is_file() for m in archive.members()):
            print(f"{target}: complete, skipped")
            continue
        zip_path = root / archive.name
        if not zip_path.exists():
            fetch(base_url.rstrip("/") + "/" + archive.name, zip_path)
        try:
            digest = verify_archive(zip_path, archive, sha256.get(archive.name))
        except DownloadError:
            zip_path.unlink()  # never keep a bad archive as if it were complete
            raise
        print(f"{zip_path.name}: verified, sha256 {digest}")
        staging = root / (archive.folder + ".unpacking")
        shutil.rmtree(staging, ignore_errors=True)
        with zipfile.ZipFile(zip_path) as zipped:
            zipped.extractall(staging)
        shutil.rmtree(target, ignore_errors=True)
        (staging / archive.folder).replace(target)
        shutil.rmtree(staging)
        zip_path.unlink()
        print(f"{target}: {len(archive.numbers)} images")
