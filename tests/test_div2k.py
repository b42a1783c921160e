"""The DIV2K downloader against a local HTTP server on 127.0.0.1 serving small fake archives."""

import hashlib
import http.server
import io
import subprocess
import sys
import threading
import zipfile
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from PIL import Image

from q1net.data.div2k import DIV2K_ARCHIVES, DownloadError, download_div2k, fetch
from q1net.data.sources import DIV2KSource

ROOT = Path(__file__).resolve().parents[1]


def fake_archive(archive, drop: int | None = None) -> bytes:
    tiny = io.BytesIO()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tiny, format="PNG")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as zipped:
        for number in archive.numbers:
            if number != drop:
                zipped.writestr(f"{archive.folder}/{number:04d}.png", tiny.getvalue())
    return buffer.getvalue()


class RangeHandler(http.server.BaseHTTPRequestHandler):
    files: ClassVar[dict[str, bytes]] = {}
    requests: ClassVar[list[str]] = []
    cut_after: int | None = None  # close the connection after this many bytes (first request only)

    def do_GET(self):
        name = self.path.rsplit("/", 1)[-1]
        body = self.files.get(name)
        self.requests.append(self.headers.get("Range", "whole"))
        if body is None:
            self.send_error(404)
            return
        start = int(self.headers["Range"].split("=")[1].rstrip("-")) if "Range" in self.headers else 0
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        payload = body[start:]
        if RangeHandler.cut_after is not None:
            payload, RangeHandler.cut_after = payload[: RangeHandler.cut_after], None
            self.wfile.write(payload)
            self.wfile.flush()
            self.connection.shutdown(2)  # the client sees a short read: an interrupted download
            return
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    RangeHandler.files = {a.name: fake_archive(a) for a in DIV2K_ARCHIVES}
    RangeHandler.requests, RangeHandler.cut_after = [], None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RangeHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()


def test_download_unpacks_the_paper_split(server, tmp_path):
    download_div2k(tmp_path, base_url=server)
    assert len(DIV2KSource(str(tmp_path), "train")) == 700
    assert len(DIV2KSource(str(tmp_path), "val")) == 100
    test = DIV2KSource(str(tmp_path), "test")
    assert test.name(0) == "0801.png" and test.load(99).shape == (4, 4, 3)
    assert not list(tmp_path.glob("*.zip")) and not list(tmp_path.glob("*.part"))
    download_div2k(tmp_path, base_url=server)  # complete: nothing fetched again
    assert len(RangeHandler.requests) == 2


def test_interrupted_download_resumes_with_a_range_request(server, tmp_path):
    archive = DIV2K_ARCHIVES[1]
    RangeHandler.cut_after = 1000
    with pytest.raises(DownloadError, match="resume"):
        fetch(server + archive.name, tmp_path / archive.name)
    partial = tmp_path / (archive.name + ".part")
    assert partial.stat().st_size == 1000 and not (tmp_path / archive.name).exists()
    fetch(server + archive.name, tmp_path / archive.name)
    assert RangeHandler.requests[-1] == "bytes=1000-"
    assert (tmp_path / archive.name).read_bytes() == RangeHandler.files[archive.name]


def test_checksum_mismatch_is_never_taken_as_complete(server, tmp_path):
    wrong = {DIV2K_ARCHIVES[0].name: "0" * 64}
    with pytest.raises(DownloadError, match="SHA-256"):
        download_div2k(tmp_path, base_url=server, sha256=wrong)
    assert not (tmp_path / "DIV2K_train_HR").exists() and not (tmp_path / DIV2K_ARCHIVES[0].name).exists()
    right = {a.name: hashlib.sha256(RangeHandler.files[a.name]).hexdigest() for a in DIV2K_ARCHIVES}
    download_div2k(tmp_path, base_url=server, sha256=right)
    assert (tmp_path / "DIV2K_valid_HR/0900.png").is_file()


def test_incomplete_or_corrupt_archives_are_refused(server, tmp_path):
    RangeHandler.files[DIV2K_ARCHIVES[0].name] = fake_archive(DIV2K_ARCHIVES[0], drop=17)
    with pytest.raises(DownloadError, match="missing"):
        download_div2k(tmp_path, base_url=server)
    corrupt = bytearray(fake_archive(DIV2K_ARCHIVES[0]))
    corrupt[200] ^= 0xFF  # inside the first member's data: its CRC no longer matches
    RangeHandler.files[DIV2K_ARCHIVES[0].name] = bytes(corrupt)
    with pytest.raises(DownloadError, match=r"CRC|readable"):
        download_div2k(tmp_path, base_url=server)


def test_cli_reports_a_failure_in_one_line(server, tmp_path):
    command = [
        sys.executable,
        "-m",
        "q1net.cli",
        "data",
        "div2k",
        "--root",
        str(tmp_path),
        "--base-url",
        server + "nothing/",
        "--sha256",
        "x=y",
    ]
    RangeHandler.files = {}
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0 and "HTTP 404" in result.stderr


def test_missing_div2k_images_name_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="q1net data div2k"):
        DIV2KSource(str(tmp_path), "train")
