"""Every kind of bad or unusual input gets its documented answer (README, "Limits and errors").

Each case is checked through the Python API, and all of them together in one
`q1net predict` run: the good files are still predicted, each bad one gets one
line on stderr naming it, the exit code is 1, and no traceback or partial
output file appears.
"""

import io
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from q1net import Predictor
from q1net.data.images import ImageReadError, find_images, read_image
from q1net.data.jpeg import jpeg_encode, jpeg_roundtrip

ROOT = Path(__file__).resolve().parents[1]


def png_bytes(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **options)
    return buffer.getvalue()


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A 60-byte PNG declaring width x height pixels: refused before any pixel is allocated."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00")) + chunk(b"IEND", b"")


def rgb(photo: np.ndarray) -> Image.Image:
    return Image.fromarray(jpeg_roundtrip(photo, 60))


def animated(photo: np.ndarray, kind: str) -> bytes:
    frames = [rgb(photo), Image.fromarray(photo[::-1].copy()), Image.fromarray(photo[:, ::-1].copy())]
    buffer = io.BytesIO()
    frames[0].save(buffer, format=kind, save_all=True, append_images=frames[1:], duration=100)
    return buffer.getvalue()


def exif_rotated(photo: np.ndarray) -> bytes:
    image = Image.fromarray(photo)
    exif = image.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 CW to display
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=70, exif=exif)
    return buffer.getvalue()


def cmyk_jpeg(photo: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(photo).convert("CMYK").save(buffer, format="JPEG", quality=80)
    return buffer.getvalue()


# name -> (bytes maker, expected): ("error", words of the one-line message) or ("ok", words of a note or "")
CASES = {
    "zero.png": (lambda p: b"", ("error", "empty file")),
    "truncated.png": (lambda p: png_bytes(rgb(p))[:600], ("error", "cannot decode")),
    "truncated.jpg": (lambda p: jpeg_encode(p, 80)[:700], ("error", "cannot decode")),
    "text.png": (lambda p: b"this is not a picture\n", ("error", "not a recognised image format")),
    "drawing.svg": (lambda p: b'<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64"/>', ("error", "not a recognised")),
    "one.png": (lambda p: png_bytes(Image.new("RGB", (1, 1))), ("error", "smaller than one 16x16 patch")),
    "fifteen.png": (lambda p: png_bytes(rgb(p).crop((0, 0, 15, 15))), ("error", "smaller than one 16x16 patch")),
    "seventeen_by_nine.png": (lambda p: png_bytes(rgb(p).crop((0, 0, 17, 9))), ("error", "smaller than one 16x16 patch")),
    "bomb.png": (lambda p: bomb_png(), ("error", "decompression bomb")),
    "sixteen_bit.png": (lambda p: png_bytes(Image.fromarray(p[:, :, 1].astype(np.uint16) * 257)), ("ok", "16-bit")),
    "rgba.png": (lambda p: png_bytes(rgb(p).convert("RGBA")), ("ok", "transparency ignored")),
    "la.png": (lambda p: png_bytes(rgb(p).convert("LA")), ("ok", "transparency ignored")),
    "palette.png": (lambda p: png_bytes(rgb(p).convert("P"), transparency=0), ("ok", "transparency ignored")),
    "cmyk.jpg": (lambda p: cmyk_jpeg(p), ("ok", "CMYK")),
    "gray.png": (lambda p: png_bytes(rgb(p).convert("L")), ("ok", "")),
    "rotated.jpg": (lambda p: exif_rotated(p), ("ok", "")),
    "animated.gif": (lambda p: animated(p, "GIF"), ("ok", "first of 3 frames")),
    "animated.png": (lambda p: animated(p, "PNG"), ("ok", "first of 3 frames")),
    b"non-utf8-\xff.png": (lambda p: png_bytes(rgb(p)), ("ok", "")),
}


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor.from_pretrained(blocks=4)


@pytest.fixture(scope="module")
def folder(tmp_path_factory, photo) -> Path:
    root = tmp_path_factory.mktemp("bad")
    for name, (make, _) in CASES.items():
        path = os.path.join(os.fsencode(root), name if isinstance(name, bytes) else name.encode())
        with open(path, "wb") as file:
            file.write(make(photo))
    return root


def path_of(folder: Path, name: str | bytes) -> str:
    return os.fsdecode(os.path.join(os.fsencode(folder), name if isinstance(name, bytes) else name.encode()))


@pytest.mark.parametrize("name", list(CASES), ids=[os.fsdecode(n) for n in CASES])
def test_each_case_through_the_api(predictor, folder, name):
    kind, words = CASES[name][1]
    path = path_of(folder, name)
    if kind == "error":
        with pytest.raises((ImageReadError, ValueError), match=words) as raised:
            predictor.predict(path)
        if isinstance(raised.value, ImageReadError):
            assert str(raised.value).startswith(path)  # names the file
    else:
        result = predictor.predict(path)
        assert 1 <= result.quality <= 100
        assert not words or any(words in note for note in result.notes), result.notes


def test_exif_orientation_does_not_change_the_answer(predictor, folder):
    """The coding grid lives in the stored orientation (q1net.data.images): reading ignores EXIF rotation."""
    path = path_of(folder, "rotated.jpg")
    stored = np.asarray(Image.open(path))
    assert predictor.predict(path).quality == predictor.predict(stored).quality
    assert read_image(path).pixels.shape == stored.shape


def test_pixel_limit_is_configurable_and_checked_before_decoding(folder):
    path = path_of(folder, "gray.png")
    with pytest.raises(ImageReadError, match="over the 1000-pixel limit"):
        read_image(path, max_pixels=1000)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_file(tmp_path, photo):
    path = tmp_path / "locked.png"
    path.write_bytes(png_bytes(rgb(photo)))
    path.chmod(0)
    with pytest.raises(ImageReadError, match="permission denied"):
        read_image(path)


def test_symlink_loop_is_walked_once(tmp_path, photo):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.png").write_bytes(png_bytes(rgb(photo)))
    (tmp_path / "a" / "loop").symlink_to(tmp_path)
    assert [p.name for p in find_images(tmp_path)] == ["x.png"]


def test_one_cli_run_over_every_case(folder, tmp_path):
    maps = tmp_path / "maps"
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    run = subprocess.run(
        [sys.executable, "-m", "q1net.cli", "predict", folder, "--format", "json", "--blocks", "4", "--heatmap", maps],
        capture_output=True,
        env=env,
        timeout=600,
    )
    stdout, stderr = run.stdout.decode(), run.stderr.decode("utf-8", "backslashreplace")
    assert run.returncode == 1 and "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("q1net: ")]
    rows = [json.loads(line) for line in stdout.splitlines()]
    expected_errors = {n for n, (_, (kind, _)) in CASES.items() if kind == "error" and Path(os.fsdecode(n)).suffix != ".svg"}
    expected_rows = {n for n, (_, (kind, _)) in CASES.items() if kind == "ok"}
    assert len(errors) == len(expected_errors) and len(rows) == len(expected_rows)  # .svg is not an image suffix: not searched
    for name in expected_errors:
        assert sum(os.fsdecode(name) in line for line in errors) == 1, name
    assert any(row["path"].endswith("non-utf8-\udcff.png") for row in rows)
    assert sorted(maps.iterdir()) == sorted(Path(row["heatmap"]) for row in rows)  # one each, no partial or temporary files
    assert all(Image.open(p).size[0] > 0 for p in maps.iterdir())
