"""Image folders: scan layouts and refusals, decode modes and transforms, stratified splits, on real files."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ganops.data.folder import FolderError, Inventory, decode, scan, split_indices

ORIENTATION = 0x0112  # the EXIF orientation tag


def save(path: Path, image: Image.Image | np.ndarray, **options) -> Path:
    """Write an image file (parents created) and return its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    image.save(path, **options)
    return path


def grey(seed: int, shape: tuple[int, ...] = (28, 28)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def read(path: Path, *, resolution: int = 28, channels: int = 1, transform: str = "stretch",
         resample: str = "nearest", background: str = "black") -> np.ndarray:
    """decode's pixels with defaults that keep a 28x28 file exact."""
    pixels, _ = decode(path, resolution=resolution, channels=channels, transform=transform,
                       resample=resample, background=background)
    return pixels


def error_of(call, *args) -> str:
    with pytest.raises(FolderError) as caught:
        call(*args)
    return str(caught.value)


# --- scan: layouts ------------------------------------------------------------------------------------

def test_labelled_folder_sorted_classes_labels_and_hashes(tmp_path):
    root = tmp_path / "images"
    for seed, name in enumerate(["Sandal", "Coat", "Bag"]):
        for i in (1, 0):
            save(root / name / f"img_{i}.png", grey(10 * seed + i))
    save(root / "Coat" / "nested" / "deep.png", grey(99))  # sub-folders belong to their class
    inventory = scan(root)
    assert inventory.classes == ("Bag", "Coat", "Sandal")
    assert [(e.path, e.label, e.split) for e in inventory.entries] == [
        ("Bag/img_0.png", 0, None), ("Bag/img_1.png", 0, None),
        ("Coat/img_0.png", 1, None), ("Coat/img_1.png", 1, None), ("Coat/nested/deep.png", 1, None),
        ("Sandal/img_0.png", 2, None), ("Sandal/img_1.png", 2, None),
    ]
    for entry in inventory.entries:
        blob = (root / entry.path).read_bytes()
        assert entry.sha256 == hashlib.sha256(blob).hexdigest() and entry.size == len(blob)
    assert inventory.skipped == {"hidden": 0, "not_an_image": 0}
    assert scan(root) == inventory  # same folder, same inventory


def test_inventory_json_round_trip_is_exact(tmp_path):
    save(tmp_path / "A" / "x.png", grey(0))
    save(tmp_path / "B" / "y.png", grey(1))
    inventory = scan(tmp_path)
    text = json.dumps(inventory.to_json())
    assert Inventory.from_json(json.loads(text)) == inventory
    assert json.dumps(Inventory.from_json(json.loads(text)).to_json()) == text
    assert json.loads(text)["classes"] == ["A", "B"]


def test_unlabelled_folder_with_any_extension_case(tmp_path):
    save(tmp_path / "b.PNG", grey(0))
    save(tmp_path / "a.JPG", grey(1), format="JPEG")
    save(tmp_path / "empty" / "notes.txt", Image.new("L", (1, 1)), format="PNG")  # a folder without images
    inventory = scan(tmp_path)
    assert inventory.classes is None
    assert [(e.path, e.label, e.split) for e in inventory.entries] == [("a.JPG", -1, None), ("b.PNG", -1, None)]
    assert inventory.skipped == {"hidden": 0, "not_an_image": 1}


def test_train_test_folders_are_the_splits(tmp_path):
    for split in ("train", "test"):
        for name in ("dog", "cat"):
            save(tmp_path / split / name / "0.png", grey(len(split + name)))
    inventory = scan(tmp_path)
    assert inventory.classes == ("cat", "dog")
    assert [(e.path, e.label, e.split) for e in inventory.entries] == [
        ("test/cat/0.png", 0, "test"), ("test/dog/0.png", 1, "test"),
        ("train/cat/0.png", 0, "train"), ("train/dog/0.png", 1, "train"),
    ]


def test_unlabelled_train_test_folders(tmp_path):
    save(tmp_path / "train" / "a.png", grey(0))
    save(tmp_path / "test" / "b.png", grey(1))
    inventory = scan(tmp_path)
    assert inventory.classes is None
    assert [(e.path, e.label, e.split) for e in inventory.entries] == [("test/b.png", -1, "test"),
                                                                       ("train/a.png", -1, "train")]


def test_train_and_test_with_different_classes_is_an_error(tmp_path):
    for split, names in (("train", ("A", "B")), ("test", ("A", "C"))):
        for name in names:
            save(tmp_path / split / name / "0.png", grey(0))
    message = error_of(scan, tmp_path)
    assert str(tmp_path / "train") in message and str(tmp_path / "test") in message
    assert "'C'" in message and "same class folders" in message


def test_images_outside_train_and_test_are_an_error(tmp_path):
    save(tmp_path / "train" / "a.png", grey(0))
    save(tmp_path / "test" / "b.png", grey(1))
    save(tmp_path / "stray.png", grey(2))
    message = error_of(scan, tmp_path)
    assert str(tmp_path / "stray.png") in message and "move them into train/ or test/" in message


# --- scan: refusals and skips -------------------------------------------------------------------------

def test_missing_and_empty_roots(tmp_path):
    missing = tmp_path / "nope"
    message = error_of(scan, missing)
    assert str(missing) in message and "not found" in message and "fix the path" in message
    empty = tmp_path / "empty"
    empty.mkdir()
    message = error_of(scan, empty)
    assert str(empty) in message and "no images" in message and "put images in" in message


def test_empty_class_folder(tmp_path):
    save(tmp_path / "A" / "x.png", grey(0))
    (tmp_path / "B").mkdir()
    message = error_of(scan, tmp_path)
    assert str(tmp_path / "B") in message and "put images in it or remove it" in message


def test_class_folders_mixed_with_loose_images(tmp_path):
    save(tmp_path / "A" / "x.png", grey(0))
    for i in range(5):
        save(tmp_path / f"loose_{i}.png", grey(i))
    message = error_of(scan, tmp_path)
    assert str(tmp_path) in message and str(tmp_path / "loose_2.png") in message and "2 more" in message
    assert "into a class folder" in message and "unlabelled set" in message


def test_hidden_and_non_image_files_are_skipped_and_counted(tmp_path):
    save(tmp_path / "A" / "x.png", grey(0))
    save(tmp_path / "A" / ".hidden.png", grey(1))
    (tmp_path / "A" / ".DS_Store").write_bytes(b"\0")
    (tmp_path / ".git" / "objects").mkdir(parents=True)
    (tmp_path / ".git" / "HEAD").write_text("ref")
    (tmp_path / ".git" / "objects" / "ab").write_text("blob")
    (tmp_path / "README.txt").write_text("my images")
    (tmp_path / "A" / "labels.csv").write_text("x,1")
    inventory = scan(tmp_path)
    assert [e.path for e in inventory.entries] == ["A/x.png"]
    assert inventory.skipped == {"hidden": 4, "not_an_image": 2}


def test_symlinks_to_files_and_folders_are_followed(tmp_path):
    outside = tmp_path / "outside"
    target = save(outside / "real.png", grey(0))
    save(outside / "more" / "m.png", grey(1))
    root = tmp_path / "root"
    save(root / "A" / "x.png", grey(2))
    (root / "A" / "link.png").symlink_to(target)
    (root / "A" / "more").symlink_to(outside / "more")
    inventory = scan(root)
    assert [e.path for e in inventory.entries] == ["A/link.png", "A/more/m.png", "A/x.png"]
    assert inventory.entries[0].sha256 == hashlib.sha256(target.read_bytes()).hexdigest()


def test_dangling_symlink_is_an_error(tmp_path):
    save(tmp_path / "A" / "x.png", grey(0))
    link = tmp_path / "A" / "gone.png"
    link.symlink_to(tmp_path / "deleted.png")
    message = error_of(scan, tmp_path)
    assert f"cannot read {link}" in message and "does not exist" in message and "remove it" in message


@pytest.mark.parametrize("points_at", ["root", "parent"])
def test_symlink_loop_is_an_error(tmp_path, points_at):
    root = tmp_path / "root"
    save(root / "A" / "x.png", grey(0))
    link = root / "A" / "loop"
    link.symlink_to(root if points_at == "root" else tmp_path)
    message = error_of(scan, root)
    assert f"symlink loop: {link}" in message and "remove the link" in message


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_file_is_an_error(tmp_path):
    locked = save(tmp_path / "A" / "x.png", grey(0))
    locked.chmod(0)
    try:
        message = error_of(scan, tmp_path)
    finally:
        locked.chmod(0o644)
    assert f"cannot read {locked}" in message and "fix its permissions or remove it" in message


# --- decode: refusals ---------------------------------------------------------------------------------

def test_text_file_with_an_image_extension(tmp_path):
    fake = tmp_path / "x.png"
    fake.write_text("not a picture")
    message = error_of(read, fake)
    assert str(fake) in message and "not an image Pillow can read" in message and "fix its extension" in message


@pytest.mark.parametrize("name", ["cut.png", "cut.jpg"])
def test_truncated_files(tmp_path, name):
    path = save(tmp_path / name, grey(0, (64, 64, 3)))
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    message = error_of(read, path)
    assert str(path) in message and "truncated or damaged" in message and "re-export it or remove it" in message


@pytest.mark.parametrize("side, pixels", [(40, "1,600"), (100, "10,000")])  # Pillow's warning, then error range
def test_decompression_bomb_is_refused(tmp_path, monkeypatch, side, pixels):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    path = save(tmp_path / "bomb.png", Image.new("L", (side, side)))
    message = error_of(read, path)
    assert str(path) in message and f"{pixels} pixels" in message and "1,000" in message
    assert "decompression bomb" in message and "downscale the file" in message


def test_invalid_options_name_the_allowed_values(tmp_path):
    path = save(tmp_path / "x.png", grey(0))
    with pytest.raises(ValueError, match="resolution must be one of 28, 32, 64"):
        read(path, resolution=30)
    with pytest.raises(ValueError, match="transform must be one of pad, center-crop, stretch"):
        read(path, transform="zoom")
    with pytest.raises(ValueError, match="background must be one of black, white"):
        read(path, background="grey")


# --- decode: modes ------------------------------------------------------------------------------------

def test_mode_1_becomes_0_and_255(tmp_path):
    bits = grey(0) > 127
    path = save(tmp_path / "bits.png", Image.fromarray(bits))
    assert Image.open(path).mode == "1"
    np.testing.assert_array_equal(read(path), np.where(bits, 255, 0))


def test_palette_without_and_with_transparency(tmp_path):
    image = Image.new("P", (28, 28), 0)
    image.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    image.putpixel((1, 2), 1)
    plain = save(tmp_path / "plain.png", image)
    pixels = read(plain, channels=3)
    assert pixels[2, 1].tolist() == [200, 100, 50] and pixels[0, 0].tolist() == [10, 20, 30]
    keyed = save(tmp_path / "keyed.png", image, transparency=1)
    for background, value in (("black", 0), ("white", 255)):
        pixels = read(keyed, channels=3, background=background)
        assert pixels[2, 1].tolist() == [value] * 3 and pixels[0, 0].tolist() == [10, 20, 30]


def test_grey_with_alpha_is_composited(tmp_path):
    pixels = np.zeros((28, 28, 2), dtype=np.uint8)
    pixels[..., 0], pixels[..., 1] = 200, 255
    pixels[0, 0, 1] = 0  # fully transparent
    path = save(tmp_path / "la.png", Image.fromarray(pixels, mode="LA"))
    assert read(path, background="white")[0, 0] == 255 and read(path, background="black")[0, 0] == 0
    assert read(path, background="white")[5, 5] == 200


@pytest.mark.parametrize("background, fill", [("black", 0), ("white", 255)])
def test_half_transparent_rgba_over_the_background(tmp_path, background, fill):
    pixels = np.zeros((28, 28, 4), dtype=np.uint8)
    pixels[...] = (200, 100, 0, 128)
    path = save(tmp_path / "rgba.png", Image.fromarray(pixels, mode="RGBA"))
    expected = [round((c * 128 + fill * 127) / 255) for c in (200, 100, 0)]  # over an opaque canvas
    assert expected == ([100, 50, 0] if fill == 0 else [227, 177, 127])
    assert read(path, channels=3, background=background)[7, 7].tolist() == expected


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    path = save(tmp_path / "cyan.jpg", Image.new("CMYK", (28, 28), (255, 0, 0, 0)), quality=100)
    assert Image.open(path).mode == "CMYK"
    assert np.abs(read(path, channels=3).astype(int) - [0, 255, 255]).max() <= 2  # JPEG is lossy


def test_16_bit_grey_keeps_the_high_byte(tmp_path):
    deep = np.full((28, 28), 0x00FF, dtype=np.uint16)
    deep[3, 4], deep[5, 6] = 0xABCD, 0xFFFF
    path = save(tmp_path / "deep.png", deep)
    assert Image.open(path).mode == "I;16"
    pixels = read(path)
    assert (pixels[3, 4], pixels[5, 6], pixels[0, 0]) == (0xAB, 0xFF, 0x00)


def test_gif_gives_its_first_frame(tmp_path):
    frames = [Image.new("L", (28, 28), 50), Image.new("L", (28, 28), 200)]
    path = save(tmp_path / "anim.gif", frames[0], save_all=True, append_images=frames[1:])
    assert Image.open(path).n_frames == 2
    assert (read(path) == 50).all()


@pytest.mark.parametrize("orientation, marker", [(6, (0, 27)), (8, (27, 0))])  # 90 degrees cw / ccw
def test_exif_orientation_is_applied(tmp_path, orientation, marker):
    pixels = np.zeros((28, 28), dtype=np.uint8)
    pixels[0, 0] = 255  # top left as stored
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    path = save(tmp_path / "turned.png", pixels, exif=exif)
    decoded = read(path)
    assert decoded[marker] == 255 and decoded.sum() == 255


@pytest.mark.parametrize("name, options", [("x.webp", {"lossless": True}), ("x.bmp", {})])
def test_webp_and_bmp_read_exactly(tmp_path, name, options):
    pixels = grey(3)
    np.testing.assert_array_equal(read(save(tmp_path / name, pixels, **options)), pixels)


# --- decode: transforms -------------------------------------------------------------------------------

def halves(tmp_path: Path) -> Path:
    """A 20x10 (wide) grey image: left half 60, right half 180."""
    pixels = np.full((10, 20), 60, dtype=np.uint8)
    pixels[:, 10:] = 180
    return save(tmp_path / "halves.png", pixels)


def test_center_crop_keeps_the_middle_square(tmp_path):
    pixels = read(halves(tmp_path), transform="center-crop")
    assert (pixels[:, :14] == 60).all() and (pixels[:, 14:] == 180).all()


@pytest.mark.parametrize("background, fill", [("black", 0), ("white", 255)])
def test_pad_shows_the_background_above_and_below(tmp_path, background, fill):
    pixels = read(halves(tmp_path), transform="pad", background=background)
    # 20x10 pads to 20x20 (5 rows each side), then nearest-resizes to 28: rows 0-6 and 21-27 are padding
    assert (pixels[:7] == fill).all() and (pixels[21:] == fill).all()
    assert (pixels[7:21, :14] == 60).all() and (pixels[7:21, 14:] == 180).all()


def test_stretch_fills_the_square(tmp_path):
    pixels = read(halves(tmp_path), transform="stretch")
    assert (pixels[:, :14] == 60).all() and (pixels[:, 14:] == 180).all()


def test_upscaled_flag(tmp_path):
    def flag(path: Path, resolution: int) -> bool:
        pixels, upscaled = decode(path, resolution=resolution, channels=3, transform="center-crop",
                                  resample="lanczos", background="black")
        assert pixels.shape == (resolution, resolution, 3) and pixels.dtype == np.uint8
        return upscaled

    assert flag(halves(tmp_path), 28)  # short side 10 < 28
    assert not flag(save(tmp_path / "large.png", grey(0, (60, 100))), 28)
    assert flag(save(tmp_path / "medium.png", grey(0, (60, 100, 3))), 64)  # short side 60 < 64
    assert not flag(save(tmp_path / "exact.png", grey(0)), 28)


@pytest.mark.parametrize("transform", ["center-crop", "pad", "stretch"])
@pytest.mark.parametrize("resample", ["lanczos", "bicubic", "bilinear", "box", "nearest"])
def test_28_pixel_grey_png_decodes_to_exactly_its_pixels(tmp_path, transform, resample):
    pixels = grey(7)
    decoded, upscaled = decode(save(tmp_path / "x.png", pixels), resolution=28, channels=1,
                               transform=transform, resample=resample, background="white")
    assert decoded.dtype == np.uint8 and not upscaled
    np.testing.assert_array_equal(decoded, pixels)


def test_three_channels_of_a_grey_image_replicate_it(tmp_path):
    pixels = grey(8)
    decoded = read(save(tmp_path / "x.png", pixels), channels=3)
    assert decoded.shape == (28, 28, 3)
    for channel in range(3):
        np.testing.assert_array_equal(decoded[..., channel], pixels)


# --- split_indices ------------------------------------------------------------------------------------

def test_stratified_split_counts_are_exact():
    labels = np.array([0] * 10 + [1] * 5 + [2] * 3 + [3] * 2 + [4] * 4)
    train, test = split_indices(labels, test_fraction=0.2, seed=0)
    # round(0.2 * n): 10 -> 2, 5 -> 1, 3 -> 1, 2 -> 0 raised to 1, 4 -> 1
    assert np.bincount(labels[test]).tolist() == [2, 1, 1, 1, 1]
    assert np.bincount(labels[train]).tolist() == [8, 4, 2, 1, 3]
    assert (np.diff(train) > 0).all() and (np.diff(test) > 0).all()
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(len(labels)))
    _, most = split_indices(labels, test_fraction=0.9, seed=0)
    assert np.bincount(labels[most]).tolist() == [9, 4, 2, 1, 3]  # each class keeps one for training


def test_split_is_seeded():
    labels = np.arange(200) % 4
    first = split_indices(labels, test_fraction=0.25, seed=1)
    again = split_indices(labels, test_fraction=0.25, seed=1)
    other = split_indices(labels, test_fraction=0.25, seed=2)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not np.array_equal(first[1], other[1])


def test_class_with_one_image_cannot_be_split():
    message = error_of(lambda: split_indices(np.array([0, 0, 1, 2, 2]), test_fraction=0.5, seed=0))
    assert "class 1" in message and "at least 2 per class" in message and "add images" in message


def test_unlabelled_split_is_a_plain_fraction():
    train, test = split_indices(np.full(10, -1), test_fraction=0.3, seed=0)
    assert len(test) == 3 and len(train) == 7
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(10))
