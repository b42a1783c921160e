import numpy as np
import pytest
from PIL import Image

from q1net.data.images import ImageReadError, load_rgb, to_rgb_array
from q1net.data.sources import FolderSource, SyntheticSource


def test_folder_source_is_recursive_sorted_and_warns_about_jpeg(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (40, 40, 3), np.uint8)
    (tmp_path / "b").mkdir()
    Image.fromarray(pixels).save(tmp_path / "b" / "x.png")
    Image.fromarray(pixels).save(tmp_path / "a.bmp")
    Image.fromarray(pixels).save(tmp_path / "c.jpg", quality=90)
    with pytest.warns(UserWarning, match="1 JPEG files .* skipped"):
        source = FolderSource(str(tmp_path))
    assert [source.name(i) for i in range(len(source))] == ["a.bmp", "b/x.png"]
    np.testing.assert_array_equal(source.load(1), pixels)
    with pytest.warns(UserWarning, match="approximate"):
        assert len(FolderSource(str(tmp_path), allow_jpeg=True)) == 3


def test_folder_source_errors_name_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        FolderSource(str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="no lossless images"):
        FolderSource(str(tmp_path))


def test_synthetic_source_is_seeded_and_photo_like():
    a, b = SyntheticSource(count=2, size=128, seed=4), SyntheticSource(count=2, size=128, seed=4)
    np.testing.assert_array_equal(a.load(1), b.load(1))
    assert not np.array_equal(a.load(0), a.load(1))
    image = a.load(0)
    assert image.shape == (128, 128, 3) and image.dtype == np.uint8 and image.std() > 10


def test_conversions_keep_jpeg_samples():
    rgb = np.random.default_rng(1).integers(0, 256, (8, 8, 3), np.uint8)
    np.testing.assert_array_equal(to_rgb_array(Image.fromarray(rgb).convert("RGBA")), rgb)  # alpha dropped
    gray = rgb[:, :, 0]
    wide = Image.fromarray(gray.astype(np.uint16) * 257)  # 8 -> 16 bit widening
    np.testing.assert_array_equal(to_rgb_array(wide)[:, :, 1], gray)
    np.testing.assert_array_equal(to_rgb_array(Image.fromarray(gray).convert("LA"))[:, :, 2], gray)
    palette = Image.fromarray(rgb).convert("P")
    assert to_rgb_array(palette).shape == (8, 8, 3)


def test_load_rgb_names_the_file_and_the_problem(tmp_path):
    fake = tmp_path / "fake.png"
    fake.write_text("not an image")
    with pytest.raises(ImageReadError, match=r"fake\.png: not a recognised image format"):
        load_rgb(fake)
    with pytest.raises(ImageReadError, match="no such file"):
        load_rgb(tmp_path / "missing.png")
    Image.fromarray(np.zeros((100, 100, 3), np.uint8)).save(tmp_path / "big.png")
    with pytest.raises(ImageReadError, match="pixel limit"):
        load_rgb(tmp_path / "big.png", max_pixels=5000)


def test_every_nth_image_and_concatenated_sources(tmp_path):
    from q1net.data.sources import ConcatSource

    for index in range(5):
        Image.fromarray(np.full((20, 20, 3), index, np.uint8)).save(tmp_path / f"{index}.png")
    half = FolderSource(str(tmp_path), every=2)
    assert [half.name(i) for i in range(len(half))] == ["0.png", "2.png", "4.png"]
    mixed = ConcatSource([half, SyntheticSource(count=2, size=32, seed=0)])
    assert len(mixed) == 5 and mixed.name(3) == "dead_leaves_0_00000" and mixed.load(1)[0, 0, 0] == 2
    np.testing.assert_array_equal(mixed.load(4), SyntheticSource(count=2, size=32, seed=0).load(1))
    with pytest.raises(IndexError):
        mixed.load(5)
    with pytest.raises(ValueError, match="at least 1"):
        FolderSource(str(tmp_path), every=0)
