"""ONNX Runtime, PyTorch and the compiled forensic stage give the same answers; their files are cached; workers change nothing."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import q1net
from q1net import Predictor
from q1net.data.jpeg import jpeg_roundtrip
from q1net.data.sources import GraphicsSource
from q1net.nets.q1net import create_model
from q1net.predictor.engines import UNUSED_DAYS, CompiledLocator, cache_dir, cached_onnx, locator_path, make_engine, remove_unused
from q1net.predictor.weights import load_weights, pretrained_path

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def net():
    return load_weights(pretrained_path()).net


def test_onnxruntime_equals_pytorch(net, photos):
    patches = np.random.default_rng(0).integers(0, 256, (256, 3, 16, 16), np.uint8)
    onnx, eager = make_engine(net, "onnxruntime"), make_engine(net, "torch")
    assert (onnx.name, eager.name, make_engine(net).name) == ("onnxruntime", "torch", "onnxruntime")
    assert (onnx(patches) - eager(patches)).abs().max().item() <= 1e-3  # 0..100 scale
    images = [jpeg_roundtrip(photo, 45) for photo in photos]
    by_onnx = Predictor(net, engine="onnxruntime", method="cnn").predict_batch(images)
    by_torch = Predictor(net, engine="torch", method="cnn").predict_batch(images)
    for a, b in zip(by_onnx, by_torch, strict=True):
        assert abs(a.quality - b.quality) <= 1e-3 and a.blocks_used == b.blocks_used


def test_onnx_file_is_cached_by_weights(net):
    first = cached_onnx(net)
    stamp = first.stat().st_mtime_ns
    assert cached_onnx(net) == first and first.stat().st_mtime_ns == stamp  # not exported again
    assert first.parent.parent == cache_dir()
    torch.manual_seed(0)
    other = create_model("q1net_baseline", k=4)
    assert cached_onnx(other) != first
    assert not [p for p in first.parent.iterdir() if p.name.startswith("tmp")]  # no leftovers of the atomic write


def test_compiled_stage_gives_the_eager_answers_auto_takes_it_once_cached_and_workers_leave_no_files(net, photos, tmp_path, monkeypatch):
    monkeypatch.setenv("Q1NET_CACHE", str(tmp_path))
    eager = Predictor(net, engine="onnxruntime")
    assert not isinstance(Predictor(net).locate, CompiledLocator)  # auto: not compiled while the cache has none
    compiled = Predictor(net, engine="compiled")  # builds the package (about 40 s here)
    assert isinstance(compiled.locate, CompiledLocator) and locator_path(compiled.program).is_file()
    graphics = GraphicsSource(count=6, seed=2)
    images = [jpeg_roundtrip(photo, q) for photo in photos for q in (8, 35, 70, 95)]
    images += [jpeg_roundtrip(graphics.load(i), 40 + 10 * i) for i in range(len(graphics))]
    images += [photos[0][3:, 5:], jpeg_roundtrip(jpeg_roundtrip(photos[1], 30)[2:, 1:], 80)]  # cropped; never coded
    fields = ("quality", "quality_low", "quality_high", "determined", "method", "recompressed", "grid", "grid_sure", "lattice_quality")
    for a, b in zip(eager.predict_batch(images), compiled.predict_batch(images), strict=True):
        assert [getattr(a, f) for f in fields] == [getattr(b, f) for f in fields]
        assert a.lattice_strength == pytest.approx(b.lattice_strength, abs=0.05)
    package = locator_path(compiled.program)
    os.utime(package, (0, 0))
    assert isinstance(Predictor(net).locate, CompiledLocator)  # auto: the cached package, not built again
    assert package.stat().st_mtime > time.time() - 600  # and marked as used now (`remove_unused` keeps it)
    assert locator_path(Predictor(net, blocks=4).program) != locator_path(compiled.program)  # another shape, another build

    # pool workers end by os._exit or a signal, without the loader's own clean-up: loading must leave nothing in TMPDIR
    folder, scratch = tmp_path / "images", tmp_path / "tmp"
    folder.mkdir(), scratch.mkdir()
    for i, image in enumerate(images[:4]):
        Image.fromarray(image).save(folder / f"{i}.png")
    command = [sys.executable, "-m", "q1net.cli", "predict", str(folder), "--engine", "compiled", "--workers", "2"]
    env = os.environ | {"PYTHONPATH": str(ROOT), "TMPDIR": str(scratch)}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr
    assert not [p.name for p in scratch.iterdir() if p.name.startswith(("aotinductor_", "q1net-load-"))]


def test_compiled_stages_unused_for_a_month_are_removed_when_another_is_built(tmp_path):
    month_ago = time.time() - (UNUSED_DAYS + 1) * 86400
    old, recent, built, onnx = (tmp_path / name for name in ("locate-old.pt2", "locate-recent.pt2", "locate-new.pt2", "net.onnx"))
    for path in (old, recent, built, onnx):
        path.write_bytes(b"package")
    for path in (old, built, onnx):
        os.utime(path, (month_ago, month_ago))
    remove_unused(tmp_path, keep=built)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["locate-new.pt2", "locate-recent.pt2", "net.onnx"]


def test_engine_names_are_checked(net):
    with pytest.raises(ValueError, match="engine must be one of"):
        make_engine(net, "tensorrt")


def test_workers_give_the_same_rows(tmp_path, photos):
    for i, photo in enumerate(photos):
        Image.fromarray(jpeg_roundtrip(photo, 30 + 20 * i)).save(tmp_path / f"{i}.png")
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    rows = []
    for workers in ("1", "2"):
        command = [sys.executable, "-m", "q1net.cli", "predict", str(tmp_path), "--format", "json", "--workers", workers]
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
        assert result.returncode == 0, result.stderr
        rows.append([{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in result.stdout.splitlines()])
    assert rows[0] == rows[1] and [row["quality"] for row in rows[0]] == [30, 50, 70, 90]


@pytest.mark.parametrize(("given", "expected"), [(None, q1net.OPENMP_SPIN_ROUNDS), ("7", "7")])
def test_openmp_spin_is_shortened_before_torch_loads_unless_the_user_set_it(given, expected):
    env = {k: v for k, v in os.environ.items() if k != "GOMP_SPINCOUNT"} | ({"GOMP_SPINCOUNT": given} if given else {})
    code = "import sys, os, q1net; assert 'torch' not in sys.modules; print(os.environ['GOMP_SPINCOUNT'])"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert run.stdout.strip() == expected


HEAP_PROBE = """
import ctypes, resource, sys
from q1net.predictor.heap import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else False
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
MB = 1 << 20
libc.free(libc.malloc(8 * MB))  # glibc's own rule: freeing a mapped block raises its thresholds (mmap 8 MB, trim 16)
def one_image():  # ten 6 MB intermediates alive together, written, then all freed: 60 MB of free heap top
    blocks = [libc.malloc(6 * MB) for _ in range(10)]
    for block in blocks:
        ctypes.memset(block, 1, 6 * MB)
    for block in blocks:
        libc.free(block)
one_image()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    one_image()
print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_freed_memory_is_kept_for_the_next_image_unless_the_user_set_the_allocator():
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")} | {"PYTHONPATH": str(ROOT)}

    def probe(mode: str, env: dict[str, str]) -> tuple[str, int]:
        run = subprocess.run([sys.executable, "-c", HEAP_PROBE, mode], capture_output=True, text=True, env=env, check=True)
        kept, faults = run.stdout.split()
        return kept, int(faults)

    kept, faults_kept = probe("keep", clean)
    _, faults_default = probe("default", clean)
    assert kept == "True" and faults_kept * 10 < faults_default  # here: 0 page faults against 76,640 (the top trimmed each time)
    assert probe("keep", clean | {"MALLOC_TRIM_THRESHOLD_": "131072"})[0] == "False"


def test_a_one_off_export_is_announced_at_a_terminal(tmp_path, monkeypatch):
    """A first predict waits 20-30 s for the ONNX export (40 s for the compiled stage): `q1net` says so on a terminal's
    stderr (q1net.cli.show_notices), once, and says nothing when the file is cached."""
    import io
    import logging

    from q1net.cli import show_notices

    monkeypatch.setenv("Q1NET_CACHE", str(tmp_path))
    torch.manual_seed(0)
    small = create_model("q1net_baseline", k=4)
    stream, logger = io.StringIO(), logging.getLogger("q1net")
    level, handler = logger.level, show_notices(stream)
    try:
        path = cached_onnx(small)
        cached_onnx(small)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    lines = stream.getvalue().splitlines()
    assert lines == [f"q1net: exporting the network to ONNX for ONNX Runtime, once for these weights (20-30 s here): {path}"]
