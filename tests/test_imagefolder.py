"""Image folders: the ImageNet recipe (2015 §3.4) on real JPEG files written here, the
streaming loader (scale augmentation, deterministic with any number of workers, exact resume),
10-crop testing, the seeded val hold-out, and errors that name the folder."""

import shutil
from pathlib import Path

import pytest
import torch

from resnet_core import metrics as M
from resnet_core import stream
from resnet_core.config import DataConfig, RunConfig, num_classes, split_sizes
from resnet_core.data import make_loaders, split_folder
from resnet_core.errors import ConfigError, DataUnavailableError
from resnet_core.train import Trainer
from tests.support import CLASSES, TEST_PER_CLASS, TRAIN_PER_CLASS, VAL_PER_CLASS, recipe, write_folder

# torchvision 0.29 deprecates its image decoders for TorchCodec's (not installed here).
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding:DeprecationWarning")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return write_folder(tmp_path_factory.mktemp("images"))


@pytest.mark.unit
def test_recipe_trains_end_to_end_with_scale_augmentation_10_crop_and_exact_resume(images, monkeypatch):
    sides = []  # (view, shorter side) of every image cut
    boxes = stream.crop_boxes
    monkeypatch.setattr(
        stream, "crop_boxes", lambda *a, **kw: sides.append((kw["view"], kw["side"])) or boxes(*a, **kw)
    )
    states = []
    full = Trainer(recipe(images)).run(lambda r: states.append(r.checkpoint()) if r.epoch == 1 else None)
    assert full["status"] == "completed" and [h[M.EPOCH] for h in full["history"]] == [1, 2]
    assert 0 <= full[M.TEST_ERROR_10CROP] <= 1 and full[M.TEST_TOP5_ERROR_10CROP] == 0  # 3 classes: always in the top 5
    assert len(full["layer_response_std"]) == 16  # Fig. 7 on val: the stem's 7×7 is not a 3×3
    trained = [side for view, side in sides if view == "random"]
    assert len(trained) == 2 * CLASSES * (TRAIN_PER_CLASS - VAL_PER_CLASS)
    assert 36 <= min(trained) < max(trained) <= 48 and len(set(trained)) > 5  # scale augmentation
    assert {side for view, side in sides if view != "random"} == {36}  # evaluation: shorter side at 36, centre crop
    assert ("five", 36) in sides  # the ten crops of the test set

    resumed = Trainer(recipe(images))
    resumed.load_state_dict(states[0])
    again = resumed.run()
    keys = (M.TRAIN_LOSS, M.TRAIN_ERROR, M.VAL_LOSS, M.VAL_ERROR, M.TEST_ERROR, M.LR)
    assert [{k: h[k] for k in keys} for h in again["history"]] == [{k: h[k] for k in keys} for h in full["history"]]
    assert (again[M.TEST_ERROR_10CROP], again["layer_response_std"]) == (
        full[M.TEST_ERROR_10CROP],
        full["layer_response_std"],
    )


@pytest.mark.unit
def test_training_crops_vary_with_the_seed_and_evaluation_crops_do_not(images):
    split = split_folder(recipe(images).dataset)
    folder = stream.FolderImages(str(images), split.files, crop=32, scale_range=(36, 48))
    first = int(split.train[0])
    random_crops = [folder.crops(first, "random", seed) for seed in range(4)]
    assert all(c.shape == (1, 3, 32, 32) and c.dtype == torch.uint8 for c in random_crops)
    assert not any(torch.equal(random_crops[0], c) for c in random_crops[1:])
    assert torch.equal(folder.crops(first, "centre", 0), folder.crops(first, "centre", 1))
    five = folder.crops(first, "five", 0)
    assert five.shape == (5, 3, 32, 32) and torch.equal(five[4], folder.crops(first, "centre", 0)[0])


@pytest.mark.unit
def test_batches_are_the_same_with_any_number_of_workers(images):
    def two_epochs(workers: int) -> list:
        loaders = make_loaders(recipe(images, workers=workers), torch.device("cpu"), torch.Generator().manual_seed(1))
        return [[(x, y) for x, y in loaders.train] for _ in range(2)] + [list(loaders.ten_crop)]

    alone, two = two_epochs(0), two_epochs(2)
    for a, b in zip(alone, two, strict=True):
        for (xa, ya), (xb, yb) in zip(a, b, strict=True):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(alone[0][0][0], alone[1][0][0])  # each epoch its own order and crops
    x, y = alone[2][0]
    assert x.shape == (10 * len(y), 3, 32, 32)  # ten crops per image: five and their flips
    assert torch.equal(x[5], x[0].flip(2))


@pytest.mark.unit
def test_val_is_a_seeded_hold_out_of_train_per_class(images):
    cfg = recipe(images).dataset
    a, b, other = split_folder(cfg), split_folder(cfg), split_folder(DataConfig(**{**vars(cfg), "split_seed": 1}))
    assert torch.equal(a.train, b.train) and torch.equal(a.val, b.val) and not torch.equal(a.val, other.val)
    assert a.labels[a.val].bincount().tolist() == [VAL_PER_CLASS] * CLASSES
    assert not set(a.train.tolist()) & set(a.val.tolist())
    assert sorted(a.train.tolist() + a.val.tolist()) == list(range(CLASSES * TRAIN_PER_CLASS))
    assert all(f.startswith(b"train/") for f in a.files[a.train.numpy()])
    assert all(f.startswith(b"val/") for f in a.files[a.test.numpy()]) and len(a.test) == CLASSES * TEST_PER_CLASS
    assert split_sizes(cfg) == (len(a.train), len(a.val), len(a.test)) and num_classes(cfg) == CLASSES
    limited = split_folder(DataConfig(**{**vars(cfg), "train_limit": 5}))
    assert torch.equal(limited.train, a.train[:5])
    sampled = DataConfig(**{**vars(cfg), "eval_limit": 4})  # --smoke-test's: a seeded sample of val and test
    c = split_folder(sampled)
    assert torch.equal(c.train, a.train) and len(c.val) == len(c.test) == 4
    assert set(c.val.tolist()) < set(a.val.tolist()) and set(c.test.tolist()) < set(a.test.tolist())
    assert torch.equal(c.test, split_folder(sampled).test) and split_sizes(sampled) == (len(a.train), 4, 4)


def _no_val(root: Path) -> None:
    shutil.rmtree(root / "val")


def _empty_class(root: Path) -> None:
    (root / "train" / "class9").mkdir()
    (root / "train" / "class9" / "notes.txt").write_text("not an image")


def _stray_val_class(root: Path) -> None:
    shutil.copytree(root / "val" / "class0", root / "val" / "zebra")


def _flat_val(root: Path) -> None:
    for folder in list((root / "val").iterdir()):
        for image in folder.iterdir():
            image.rename(root / "val" / f"{folder.name}-{image.name}")
        folder.rmdir()


def _broken_image(root: Path) -> None:
    (root / "train" / "class1" / "0.JPEG").write_bytes(b"not a jpeg")


@pytest.mark.unit
@pytest.mark.parametrize(
    "breakage, named, words",
    [
        (None, "", "no such folder"),
        (_no_val, "val", "no such folder"),
        (_empty_class, "train/class9", "no images"),
        (_stray_val_class, "val/zebra", "no such class"),
        (_flat_val, "val", "sorted into class folders"),
        (_broken_image, "train/class1/0.JPEG", "not a readable image"),
    ],
    ids=["missing", "no-val", "empty-class", "stray-val-class", "flat-val", "broken-image"],
)
def test_a_malformed_folder_is_one_line_naming_the_path(tmp_path, breakage, named, words):
    root = tmp_path / "nowhere"
    if breakage is not None:
        root = write_folder(tmp_path / "images", classes=2)
        breakage(root)
    with pytest.raises(DataUnavailableError) as err:
        make_loaders(recipe(root), torch.device("cpu"), torch.Generator())
    message = str(err.value)
    assert f"{root / named}:" in message and words in message and "\n" not in message


@pytest.mark.unit
@pytest.mark.parametrize(
    "data, field, words",
    [
        (dict(), "dataset.root", "required"),
        (dict(root="x", val_size=10), "dataset.val_size", "val_per_class"),
        (dict(root="x", scale_range=(200, 480)), "dataset.scale_range", "224"),
        (dict(root="x", image_size=32, scale_range=(48, 36)), "dataset.scale_range", "low ≤ high"),
        (dict(root="x", val_per_class=0), "dataset.val_per_class", "at least 1"),
        (dict(root="x", lighting=-0.1), "dataset.lighting", "0.1"),
        (dict(root="x", workers=-1), "dataset.workers", "non-negative"),
    ],
)
def test_bad_folder_settings_name_the_field(data, field, words):
    with pytest.raises(ConfigError) as err:
        DataConfig(name="imagenet", **data)
    assert err.value.field == field and words in err.value.reason


@pytest.mark.unit
def test_the_recipe_defaults_and_a_relative_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = DataConfig(name="imagenet", root="data/imagenet")
    assert cfg.root == str(tmp_path / "data" / "imagenet")  # trials read the same folder from anywhere
    assert (cfg.image_size, cfg.scale_range, cfg.lighting, cfg.val_per_class, cfg.augment) == (
        224,
        (256, 480),
        0.1,
        10,
        True,
    )
    assert split_sizes(cfg) == (1_281_167 - 10_000, 10_000, 50_000) and num_classes(cfg) == 1000  # planned without data
    with pytest.raises(ConfigError, match=r"train\.epochs"):
        RunConfig(dataset=cfg)  # the CIFAR default of 64k iterations would be a few ImageNet epochs
    with pytest.raises(ConfigError, match="leaves no training images"):
        split_sizes(
            DataConfig(
                name="imagefolder", root=str(write_folder(tmp_path / "few", classes=2)), val_per_class=TRAIN_PER_CLASS
            )
        )
