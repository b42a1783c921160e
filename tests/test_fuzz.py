"""Mutated PNG and JPEG bytes: the loader and the predictor raise only their documented errors.

The default run tries FUZZ_EXAMPLES cases; `make fuzz` runs 10,000 (README records the result).
Documented: ImageReadError for bytes that are not a readable image, ValueError for an image
that decodes but is smaller than one patch. Anything else (a crash, another exception) fails.
"""

import io
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from q1net import Predictor
from q1net.data.images import ImageReadError, read_image
from q1net.data.jpeg import jpeg_encode

FUZZ_EXAMPLES = int(os.environ.get("Q1NET_FUZZ_EXAMPLES", "150"))


def seeds() -> dict[str, bytes]:
    pixels = np.random.default_rng(0).integers(0, 256, (40, 48, 3), np.uint8)
    png = io.BytesIO()
    Image.fromarray(pixels).save(png, format="PNG")
    gray = io.BytesIO()
    Image.fromarray(pixels[:, :, 0]).save(gray, format="PNG")
    return {
        "png": png.getvalue(),
        "gray_png": gray.getvalue(),
        "jpeg": jpeg_encode(pixels, 70),
        "jpeg_444": jpeg_encode(pixels, 95, "4:4:4"),
    }


SEEDS = seeds()
PREDICTOR = Predictor.from_pretrained(blocks=2)

mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10_000), st.integers(1, 255)),
    st.tuples(st.just("cut"), st.integers(0, 10_000), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, 10_000), st.integers(0, 255)),
    st.tuples(st.just("delete"), st.integers(0, 10_000), st.integers(1, 64)),
)


def mutate(data: bytes, mutations: list[tuple[str, int, int]]) -> bytes:
    buffer = bytearray(data)
    for kind, where, value in mutations:
        where %= max(len(buffer), 1)
        if kind == "flip" and buffer:
            buffer[where] ^= value
        elif kind == "cut":
            del buffer[where:]
        elif kind == "insert":
            buffer.insert(where, value)
        else:
            del buffer[where : where + value]
    return bytes(buffer)


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=FUZZ_EXAMPLES <= 150)
@given(seed=st.sampled_from(sorted(SEEDS)), mutations=st.lists(mutation, min_size=1, max_size=4))
def test_mutated_images_raise_only_documented_errors(seed, mutations):
    data = mutate(SEEDS[seed], mutations)
    try:
        decoded = read_image(io.BytesIO(data))
    except ImageReadError as error:
        assert str(error).startswith("<image in memory>: ")
        return
    try:
        result = PREDICTOR.predict(decoded.pixels)
    except ValueError as error:
        assert "smaller than one" in str(error)
        return
    assert 1 <= result.quality <= 100 and np.isfinite(result.quality)


@pytest.mark.parametrize("seed", sorted(SEEDS))
def test_unmutated_seeds_are_predicted(seed):
    assert 1 <= PREDICTOR.predict(read_image(io.BytesIO(SEEDS[seed])).pixels).quality <= 100
