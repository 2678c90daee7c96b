"""Image folders on disk in torchvision's ImageFolder layout, found and checked without torch
(planning a sweep needs their counts, not their pixels):

    ROOT/train/<class>/<image>    the training images, one folder per class
    ROOT/val/<class>/<image>      the official validation set: reported as the test set only

Every problem is a DataUnavailableError of one line naming the folder.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

from .errors import DataUnavailableError

__all__ = ["ILSVRC2012", "IMAGE_EXTENSIONS", "FolderCounts", "FolderListing", "folder_counts", "list_folder"]

# What torchvision.io.decode_image reads, in any letter case (ImageNet's files end in .JPEG).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
LAYOUT = "an ImageFolder root holds train/ and val/, each of one folder of images per class"


@dataclass(frozen=True)
class FolderCounts:
    classes: int
    train: int  # images in train/ (before the val hold-out)
    test: int  # images in val/
    smallest_class: int  # the fewest training images of any class


# ILSVRC-2012 (Russakovsky et al. 2015): what `dataset.name: imagenet` plans with, data or not.
ILSVRC2012 = FolderCounts(classes=1000, train=1_281_167, test=50_000, smallest_class=732)


@dataclass(frozen=True)
class FolderListing:
    """File names, sorted, per class (classes sorted by name, as torchvision numbers them);
    ``test[k]`` lists val/'s images of class ``classes[k]`` (empty when val/ lacks it)."""

    root: str
    classes: tuple[str, ...]
    train: tuple[list[str], ...]
    test: tuple[list[str], ...]

    def counts(self) -> FolderCounts:
        return FolderCounts(
            len(self.classes), sum(map(len, self.train)), sum(map(len, self.test)), min(map(len, self.train))
        )


def _class_folders(split: str) -> dict[str, list[str]]:
    """{class: its image file names} of one split folder; raises naming what is wrong."""
    if not os.path.isdir(split):
        raise DataUnavailableError(f"{split}: no such folder ({LAYOUT})")
    with os.scandir(split) as entries:
        names = sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))
    if not names:
        hint = " (ImageNet's val images must first be sorted into class folders)" if split.endswith("val") else ""
        raise DataUnavailableError(f"{split}: no class folders{hint} ({LAYOUT})")
    classes = {}
    for name in names:
        with os.scandir(os.path.join(split, name)) as entries:
            files = sorted(e.name for e in entries if e.name.lower().endswith(IMAGE_EXTENSIONS) and e.is_file())
        if not files:
            raise DataUnavailableError(f"{os.path.join(split, name)}: no images ({', '.join(IMAGE_EXTENSIONS)})")
        classes[name] = files
    return classes


def list_folder(root: str) -> FolderListing:
    """The images under ``root``, checked: train/ and val/ exist, every class folder holds
    images, and val/'s classes are train/'s."""
    if not os.path.isdir(root):
        raise DataUnavailableError(f"{root}: no such folder (dataset.root: {LAYOUT})")
    train = _class_folders(os.path.join(root, "train"))
    test = _class_folders(os.path.join(root, "val"))
    for name in test:
        if name not in train:
            raise DataUnavailableError(
                f"{os.path.join(root, 'val', name)}: no such class in {os.path.join(root, 'train')}"
            )
    classes = tuple(train)
    return FolderListing(root, classes, tuple(train[c] for c in classes), tuple(test.get(c, []) for c in classes))


@functools.lru_cache(maxsize=8)
def folder_counts(root: str) -> FolderCounts:
    """list_folder's counts, once per process and folder (a plan asks for each trial)."""
    return list_folder(root).counts()
