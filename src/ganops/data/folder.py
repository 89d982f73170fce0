"""A folder of your own images: scan it into an Inventory, decode one file to uint8 pixels, split train/test.

Layouts `scan` accepts (hidden files and files without an image extension are skipped and counted):
  ROOT/<class>/**/*.png          labelled: classes are the sorted folder names, label = index
  ROOT/*.png                     unlabelled: label -1
  ROOT/train/..., ROOT/test/...  the given split, each laid out as one of the two above (same classes)
Usage:
  inventory = scan("my_images")
  pixels, upscaled = decode(Path("my_images") / inventory.entries[0].path, resolution=64, channels=3,
                            transform="center-crop", resample="lanczos", background="black")
  train, test = split_indices(labels, test_fraction=0.1, seed=0)
"""
from __future__ import annotations

import hashlib
import io
import os
import re
import stat
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ganops.params import BACKGROUNDS, CHANNELS, RESAMPLE, RESOLUTIONS, TRANSFORMS

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")  # matched case-insensitively

_FILTERS = {
    "lanczos": Image.Resampling.LANCZOS,
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "box": Image.Resampling.BOX,
    "nearest": Image.Resampling.NEAREST,
}
_BACKGROUND_VALUE = {"black": 0, "white": 255}
_CHUNK = 1 << 20
_SPLITS = ("train", "test")


class FolderError(ValueError):
    """An image folder or one of its files is unusable; the message names it, the problem and the fix."""


@dataclass(frozen=True)
class Entry:
    """One image file of the folder."""

    path: str  # POSIX path relative to the root, e.g. "train/Coat/img_001.png"
    label: int  # index into Inventory.classes, or -1 for an unlabelled set
    split: str | None  # "train" / "test" when the root has train/ and test/ folders, else None
    sha256: str  # of the file's bytes
    size: int  # bytes


@dataclass(frozen=True)
class Inventory:
    """Every image of a folder, its classes and what was skipped: the record in data/raw/sources.json."""

    entries: tuple[Entry, ...]  # sorted by path: the same folder always gives the same order
    classes: tuple[str, ...] | None  # sorted class-folder names; None when unlabelled
    skipped: dict[str, int]  # {"hidden": n, "not_an_image": n}

    def to_json(self) -> dict:
        """A JSON-able dict with a fixed key order, so the same folder writes the same bytes."""
        return {
            "classes": None if self.classes is None else list(self.classes),
            "skipped": {"hidden": self.skipped["hidden"], "not_an_image": self.skipped["not_an_image"]},
            "entries": [asdict(entry) for entry in self.entries],
        }

    @classmethod
    def from_json(cls, data: dict) -> Inventory:
        """The inverse of to_json."""
        try:
            return cls(
                entries=tuple(Entry(**entry) for entry in data["entries"]),
                classes=None if data["classes"] is None else tuple(data["classes"]),
                skipped={"hidden": int(data["skipped"]["hidden"]),
                         "not_an_image": int(data["skipped"]["not_an_image"])},
            )
        except (KeyError, TypeError) as error:
            raise FolderError(f"image inventory JSON is malformed ({error!r}): it was not written by "
                              f"Inventory.to_json; re-create it by scanning the folder again") from error


# --- scan ----------------------------------------------------------------------------------------------

def _key(path: Path) -> tuple[int, int]:
    """(st_dev, st_ino) of a folder, following links: equal keys are the same folder."""
    info = os.stat(path)
    return info.st_dev, info.st_ino


def _count_hidden(path: Path) -> int:
    """Files a hidden entry stands for: 1, or every file below a real (not linked) hidden folder."""
    if path.is_dir() and not path.is_symlink():
        return sum(len(files) for _, _, files in os.walk(path))  # no followlinks: cannot loop
    return 1


def _children(directory: Path, *, skipped: dict[str, int]) -> tuple[list[Path], list[Path]]:
    """(sub-folders, image files) of a folder, sorted by name; hidden and non-image files are counted."""
    try:
        names = sorted(os.listdir(directory))
    except OSError as error:
        raise FolderError(f"cannot read folder {directory}: {error.strerror}: "
                          f"fix its permissions or remove it") from error
    folders, images = [], []
    for name in names:
        path = directory / name
        if name.startswith("."):
            skipped["hidden"] += _count_hidden(path)
            continue
        try:
            mode = os.stat(path).st_mode
        except OSError as error:
            if path.is_symlink():
                problem = f"it is a symlink to {os.readlink(path)}, which does not exist"
            else:
                problem = error.strerror
            raise FolderError(f"cannot read {path}: {problem}: fix its permissions or remove it") from error
        if stat.S_ISDIR(mode):
            folders.append(path)
        elif path.suffix.lower() not in IMAGE_EXTENSIONS:
            skipped["not_an_image"] += 1
        elif stat.S_ISREG(mode):
            images.append(path)
        else:  # reading a FIFO would block forever
            raise FolderError(f"{path} is not a regular file (a FIFO, socket or device): remove it")
    return folders, images


def _enter(folder: Path, *, ancestors: frozenset) -> frozenset:
    """The ancestor set below `folder`; a folder that is already an ancestor is a symlink loop."""
    key = _key(folder)
    if key in ancestors:
        raise FolderError(f"symlink loop: {folder} leads back to {os.path.realpath(folder)}, a folder "
                          f"that contains it, so the scan would never end: remove the link")
    return ancestors | {key}


def _images_below(folder: Path, *, ancestors: frozenset, skipped: dict[str, int]) -> list[Path]:
    """Every image file in a folder and its sub-folders (links followed)."""
    inside = _enter(folder, ancestors=ancestors)
    folders, images = _children(folder, skipped=skipped)
    for sub in folders:
        images += _images_below(sub, ancestors=inside, skipped=skipped)
    return images


def _few(paths: list[Path]) -> str:
    """Up to 3 names and how many more, for an error message."""
    shown = ", ".join(str(path) for path in paths[:3])
    return shown + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")


def _layout(folder: Path, *, ancestors: frozenset,
            skipped: dict[str, int]) -> tuple[list[tuple[Path, str | None]], tuple[str, ...] | None]:
    """([(image path, class name or None)], sorted class names or None) of one labelled/unlabelled folder."""
    inside = _enter(folder, ancestors=ancestors)
    folders, loose = _children(folder, skipped=skipped)
    below = {sub: _images_below(sub, ancestors=inside, skipped=skipped) for sub in folders}
    class_folders = [sub for sub in folders if below[sub]]
    if loose and class_folders:
        raise FolderError(
            f"{folder} holds both class folders ({', '.join(sub.name for sub in class_folders[:3])}"
            f"{', ...' if len(class_folders) > 3 else ''}) and loose images ({_few(loose)}): move the "
            f"loose images into a class folder, or move all images to the top of {folder} for an "
            f"unlabelled set")
    if loose:
        return [(path, None) for path in loose], None
    empty = [sub for sub in folders if not below[sub]]
    if class_folders and empty:
        raise FolderError(f"empty class folder {empty[0]}: it holds no image "
                          f"({', '.join(IMAGE_EXTENSIONS)}): put images in it or remove it")
    if not class_folders:
        raise FolderError(
            f"no images in {folder} (looked for {', '.join(IMAGE_EXTENSIONS)}; skipped so far: "
            f"{skipped['hidden']} hidden, {skipped['not_an_image']} not images): put images in "
            f"{folder}/<class>/ folders for a labelled set, or directly in {folder} for an unlabelled set")
    found = [(path, sub.name) for sub in class_folders for path in below[sub]]
    return found, tuple(sorted(sub.name for sub in class_folders))


def _entry(root: Path, path: Path, *, label: int, split: str | None) -> Entry:
    """An Entry with the SHA-256 and size of the file's bytes."""
    digest, size = hashlib.sha256(), 0
    try:
        with path.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
                size += len(chunk)
    except OSError as error:
        raise FolderError(f"cannot read {path}: {error.strerror}: fix its permissions or remove it") from error
    return Entry(path=path.relative_to(root).as_posix(), label=label, split=split,
                 sha256=digest.hexdigest(), size=size)


def scan(root: str | Path) -> Inventory:
    """Inventory of an image folder (layouts in the module docstring); FolderError names what is wrong."""
    root = Path(root)
    if not root.is_dir():
        problem = "is not a folder" if root.exists() else "not found"
        raise FolderError(f"image folder {root} {problem}: fix the path, or create the folder and put "
                          f"images in it (class folders {root}/<class>/ or images directly in {root})")
    skipped = {"hidden": 0, "not_an_image": 0}
    resolved = root.resolve()
    # a link to the root or to any folder above it would lead back into the root
    ancestors = frozenset(_key(path) for path in resolved.parents)
    if (root / "train").is_dir() and (root / "test").is_dir():
        inside = _enter(root, ancestors=ancestors)
        folders, loose = _children(root, skipped=skipped)
        parts = {split: _layout(root / split, ancestors=inside, skipped=skipped) for split in _SPLITS}
        stray = loose + [path for sub in folders if sub.name not in _SPLITS
                         for path in _images_below(sub, ancestors=inside, skipped=skipped)]
        if stray:
            raise FolderError(f"{root} holds train/ and test/ and also images outside them ({_few(stray)}): "
                              f"move them into train/ or test/, or remove them")
        (_, train_classes), (_, test_classes) = parts["train"], parts["test"]
        if train_classes != test_classes:
            describe = {None: "no class folders (unlabelled)"}
            raise FolderError(
                f"{root / 'train'} has {describe.get(train_classes, train_classes)} but {root / 'test'} has "
                f"{describe.get(test_classes, test_classes)}: give train/ and test/ the same class folders")
        classes = train_classes
        found = [(path, name, split) for split in _SPLITS for path, name in parts[split][0]]
    else:
        images, classes = _layout(root, ancestors=ancestors, skipped=skipped)
        found = [(path, name, None) for path, name in images]
    label_of = {name: index for index, name in enumerate(classes or ())}
    entries = [_entry(root, path, label=label_of.get(name, -1), split=split) for path, name, split in found]
    return Inventory(entries=tuple(sorted(entries, key=lambda entry: entry.path)), classes=classes,
                     skipped=skipped)


# --- decode --------------------------------------------------------------------------------------------

def _check_choice(name: str, value, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(str, allowed))}, not {value!r}")


def _bomb_error(path: Path, error: Exception) -> FolderError:
    """The decompression-bomb refusal, with the pixel count Pillow put in its message."""
    match = re.search(r"\((\d+) pixels\)", str(error))
    pixels = f"{int(match.group(1)):,} pixels" if match else "too many pixels"
    return FolderError(f"{path} has {pixels}, more than Pillow's limit of {Image.MAX_IMAGE_PIXELS:,} "
                       f"(PIL.Image.MAX_IMAGE_PIXELS), so it is refused as a possible decompression bomb: "
                       f"downscale the file below that limit")


def _open(path: Path, data: bytes | None) -> Image.Image:
    """The first frame of an image file (or of its bytes `data`), loaded and turned upright by its EXIF
    orientation."""
    try:
        handle = io.BytesIO(data) if data is not None else path.open("rb")
    except OSError as error:
        raise FolderError(f"cannot read {path}: {error.strerror}: fix its permissions or remove it") from error
    with handle, warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(handle) as image:
                image.seek(0)  # a GIF or other multi-frame file gives its first frame
                image.load()
                return ImageOps.exif_transpose(image)  # a loaded copy, upright
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
            raise _bomb_error(path, error) from error
        except UnidentifiedImageError as error:
            raise FolderError(f"{path} is not an image Pillow can read: remove it or fix its "
                              f"extension") from error
        except (OSError, SyntaxError, ValueError, EOFError) as error:
            raise FolderError(f"{path} is truncated or damaged ({error}): re-export it or "
                              f"remove it") from error


def _to_8bit(image: Image.Image, *, path: Path, background: int) -> Image.Image:
    """An "L" or "RGB" image from any Pillow mode, each mode converted on purpose."""
    mode = image.mode
    if mode in ("L", "RGB") and "transparency" not in image.info:
        return image
    if mode == "1":
        return image.convert("L")
    if mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in image.info
        if not has_alpha:
            return image.convert("RGB")
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in ("L", "RGB"):  # a colour-key transparency (PNG tRNS) is an alpha channel too
        image, mode = image.convert("RGBA"), "RGBA"
    if mode == "La":  # premultiplied grey + alpha: Pillow converts it only as RGBa
        grey, alpha = image.split()
        image, mode = Image.merge("RGBa", (grey, grey, grey, alpha)), "RGBa"
    if mode in ("LA", "RGBA", "RGBa"):
        canvas = Image.new("RGBA", image.size, (background, background, background, 255))
        return Image.alpha_composite(canvas, image.convert("RGBA")).convert("RGB")
    if mode in ("CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
        return image.convert("RGB")
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        high = np.asarray(image).astype(np.uint16) >> 8  # the high byte of a 16-bit sample
        return Image.fromarray(high.astype(np.uint8), mode="L")
    if mode == "I":
        high = np.clip(np.asarray(image), 0, 65535) >> 8  # "I" holds 16-bit PNG samples, 0..65535
        return Image.fromarray(high.astype(np.uint8), mode="L")
    if mode == "F":
        values = np.clip(np.nan_to_num(np.asarray(image)), 0, 255)
        return Image.fromarray(np.rint(values).astype(np.uint8), mode="L")
    raise FolderError(f"{path} has Pillow mode {mode!r}, which ganops does not convert: re-export it "
                      f"as an 8-bit grayscale or RGB PNG")


def decode(path: str | Path, *, resolution: int, channels: int, transform: str, resample: str,
           background: str, data: bytes | None = None) -> tuple[np.ndarray, bool]:
    """uint8 [resolution, resolution] (channels 1) or [resolution, resolution, 3] (channels 3), and
    whether the image was upscaled (smaller than `resolution` on its short side: upscaled, not refused).
    `data`: the file's bytes when the caller has read them already (errors still name `path`).

    An image that is already resolution x resolution is returned without any resize, pixel for pixel.
    """
    _check_choice("resolution", resolution, RESOLUTIONS)
    _check_choice("channels", channels, CHANNELS)
    _check_choice("transform", transform, TRANSFORMS)
    _check_choice("resample", resample, RESAMPLE)
    _check_choice("background", background, BACKGROUNDS)
    path = Path(path)
    fill = _BACKGROUND_VALUE[background]
    image = _to_8bit(_open(path, data), path=path, background=fill)
    image = image.convert("L" if channels == 1 else "RGB")  # L: ITU-R 601-2 luma; RGB: grey replicated
    width, height = image.size
    upscaled = min(width, height) < resolution
    if transform == "center-crop":
        side = min(width, height)
        left, top = (width - side) // 2, (height - side) // 2
        image = image.crop((left, top, left + side, top + side))
    elif transform == "pad":
        side = max(width, height)
        canvas = Image.new(image.mode, (side, side), fill if channels == 1 else (fill,) * 3)
        canvas.paste(image, ((side - width) // 2, (side - height) // 2))
        image = canvas
    if image.size != (resolution, resolution):
        image = image.resize((resolution, resolution), resample=_FILTERS[resample])
    return np.array(image, dtype=np.uint8), upscaled


# --- split ---------------------------------------------------------------------------------------------

def split_indices(labels: np.ndarray, *, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, test indices), sorted, seeded; stratified by label when labels >= 0 (every class
    gets round(test_fraction * count) test images, at least 1, and keeps at least 1 for training; a class
    with fewer than 2 images is a FolderError naming the class and the fix). Unlabelled (all -1): a plain
    seeded fraction.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be one-dimensional, got shape {labels.shape}")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be between 0 and 1 (exclusive), not {test_fraction}")
    rng = np.random.default_rng(seed)
    if np.all(labels == -1):
        count = len(labels)
        if count < 2:
            raise FolderError(f"the folder has {count} image(s) and no test/ folder: a train/test split "
                              f"needs at least 2 images; add images")
        size = min(max(round(test_fraction * count), 1), count - 1)
        test = rng.permutation(count)[:size]
    elif np.all(labels >= 0):
        picked = []
        for label in np.unique(labels):  # ascending, so the draws do not depend on the input order
            members = np.flatnonzero(labels == label)
            if len(members) < 2:
                raise FolderError(
                    f"class {int(label)} (index {int(label)} in the sorted class folder names) has "
                    f"{len(members)} image: a train/test split needs at least 2 per class; add images to "
                    f"that class folder, remove the folder, or provide train/ and test/ folders")
            size = min(max(round(test_fraction * len(members)), 1), len(members) - 1)
            picked.append(rng.permutation(members)[:size])
        test = np.concatenate(picked)
    else:
        raise ValueError("labels mix -1 (unlabelled) with class labels: use all -1 or all >= 0")
    is_test = np.zeros(len(labels), dtype=bool)
    is_test[test] = True
    return np.flatnonzero(~is_test), np.flatnonzero(is_test)
