"""Training data: captioned image folders (or `datasets` datasets), DreamBooth instance/class sets, transforms.

Every example is checked before training starts (readable image, a caption), so a bad folder fails in
seconds with the file named, not after an hour. Random crops and flips draw from a generator seeded by
(seed, epoch, index): the same example gets the same augmentation on a resumed run.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .config import TrainingDataError

__all__ = [
    "IMAGE_EXTENSIONS",
    "Example",
    "TrainingDataError",
    "TrainingDataset",
    "caption_folder_examples",
    "dreambooth_examples",
    "hub_dataset_examples",
    "shard_batches",
    "transform_image",
    "transform_image_with_crop",
]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


@dataclass
class Example:
    """One training example: an image (a path or a loaded PIL image) and its caption."""

    image: Any
    caption: str
    is_class: bool = False

    def load(self) -> Image.Image:
        if isinstance(self.image, Image.Image):
            return self.image.convert("RGB")
        with Image.open(self.image) as img:
            return img.convert("RGB")


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _check_folder(folder: str | Path | None, option: str) -> Path:
    if folder is None:
        raise TrainingDataError(f"{option} is required: a folder of training images.")
    path = Path(folder)
    if not path.is_dir():
        raise TrainingDataError(f"{option}={str(folder)!r} is not an existing folder; point it at a folder of "
                                f"images ({', '.join(IMAGE_EXTENSIONS)}).")
    return path


def caption_folder_examples(folder: str | Path, image_column: str = "image", caption_column: str = "text",
                            option: str = "--train_data_dir") -> list[Example]:
    """Images with captions from `metadata.jsonl` (`{"file_name": ..., "text": ...}` lines) or `NAME.txt` files."""
    root = _check_folder(folder, option)
    metadata = root / "metadata.jsonl"
    examples: list[Example] = []
    if metadata.is_file():
        for lineno, line in enumerate(metadata.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise TrainingDataError(f"{metadata}:{lineno}: not a JSON object ({exc.msg}).") from None
            name = row.get("file_name")
            caption = row.get(caption_column)
            if not isinstance(name, str):
                raise TrainingDataError(f"{metadata}:{lineno}: needs a \"file_name\" string, got {row!r}.")
            if not isinstance(caption, str) or not caption.strip():
                raise TrainingDataError(f"{metadata}:{lineno}: {name!r} has no caption; each line needs a non-empty "
                                        f"{caption_column!r} (--caption_column).")
            path = (root / name).resolve()
            if root.resolve() not in path.parents:
                raise TrainingDataError(f"{metadata}:{lineno}: file_name {name!r} points outside {root}.")
            if not path.is_file():
                raise TrainingDataError(f"{metadata}:{lineno}: image {name!r} does not exist in {root}.")
            examples.append(Example(path, caption))
    else:
        images = _images_in(root)
        missing = [p.name for p in images if not p.with_suffix(".txt").is_file()]
        if missing:
            raise TrainingDataError(
                f"{option}={str(root)!r}: no captions for {len(missing)} image(s) ({', '.join(missing[:5])}); add "
                "a metadata.jsonl with {\"file_name\": ..., \"text\": ...} lines or a same-name .txt per image.")
        for p in images:
            caption = p.with_suffix(".txt").read_text(encoding="utf-8").strip()
            if not caption:
                raise TrainingDataError(f"{p.with_suffix('.txt')}: empty caption for {p.name}.")
            examples.append(Example(p, caption))
    if not examples:
        raise TrainingDataError(f"{option}={str(root)!r} holds no training images ({', '.join(IMAGE_EXTENSIONS)}).")
    return examples


def hub_dataset_examples(dataset_name: str, dataset_config_name: str | None, image_column: str,
                         caption_column: str, cache_dir: str | None = None) -> list[Example]:
    """Examples from a `datasets` dataset (its train split); `datasets` is an optional extra."""
    try:
        import datasets
    except ImportError:
        raise TrainingDataError("--dataset_name needs the `datasets` library: pip install 'diffblocks[datasets]' "
                                "(or use --train_data_dir with a local folder).") from None
    split = datasets.load_dataset(dataset_name, dataset_config_name, cache_dir=cache_dir)["train"]
    for column, option in ((image_column, "--image_column"), (caption_column, "--caption_column")):
        if column not in split.column_names:
            raise TrainingDataError(f"--dataset_name {dataset_name!r}: no column {column!r} ({option}); columns are "
                                    f"{split.column_names}.")
    examples = []
    for i, row in enumerate(split):
        caption = row[caption_column]
        if isinstance(caption, (list, tuple)):  # several captions per image: the reference takes the first
            caption = caption[0] if caption else None
        if not isinstance(caption, str) or not caption.strip():
            raise TrainingDataError(f"--dataset_name {dataset_name!r}: row {i} has no caption in {caption_column!r}.")
        examples.append(Example(row[image_column], caption))
    if not examples:
        raise TrainingDataError(f"--dataset_name {dataset_name!r}: the train split is empty.")
    return examples


def dreambooth_examples(instance_data_dir: str | Path, instance_prompt: str) -> list[Example]:
    """Every image of the instance folder, all captioned with the instance prompt."""
    root = _check_folder(instance_data_dir, "--instance_data_dir")
    if not instance_prompt or not instance_prompt.strip():
        raise TrainingDataError("--instance_prompt is required for dreambooth (e.g. 'a photo of sks dog').")
    images = _images_in(root)
    if not images:
        raise TrainingDataError(f"--instance_data_dir={str(root)!r} holds no images ({', '.join(IMAGE_EXTENSIONS)}).")
    return [Example(p, instance_prompt) for p in images]


def check_readable(examples: list[Example], option: str) -> None:
    """Open every image once (without decoding all pixels twice): an unreadable file fails here, named."""
    for ex in examples:
        if isinstance(ex.image, Image.Image):
            continue
        try:
            with Image.open(ex.image) as img:
                img.verify()
        except (UnidentifiedImageError, OSError, SyntaxError) as exc:
            raise TrainingDataError(f"{option}: cannot read image {str(ex.image)!r} ({exc}); fix or remove it.") \
                from None


def transform_image(image: Image.Image, resolution: int, center_crop: bool, random_flip: bool,
                    rng: random.Random) -> torch.Tensor:
    """Resize the short side to `resolution` (bilinear), crop a square (centre or random), maybe flip.

    Returns a (3, resolution, resolution) float tensor in [0, 1]; the VAE encoder step normalises it.
    """
    return transform_image_with_crop(image, resolution, center_crop, random_flip, rng)[0]


def transform_image_with_crop(image: Image.Image, resolution: int, center_crop: bool, random_flip: bool,
                              rng: random.Random) -> tuple[torch.Tensor, tuple[int, int]]:
    """`transform_image` plus the crop's top-left (y, x) in the resized image as the SDXL scripts record it.

    The SDXL scripts flip the resized image before cropping, so x is measured in the flipped image: cropping at
    `left` and then flipping gives the same pixels as flipping and cropping at `new_w - left - resolution`.
    """
    w, h = image.size
    if w <= h:
        new_w, new_h = resolution, int(resolution * h / w)
    else:
        new_w, new_h = int(resolution * w / h), resolution
    if (new_w, new_h) != (w, h):
        image = image.resize((new_w, new_h), Image.BILINEAR)
    if center_crop:
        top, left = int(round((new_h - resolution) / 2.0)), int(round((new_w - resolution) / 2.0))
    else:
        top, left = rng.randint(0, new_h - resolution), rng.randint(0, new_w - resolution)
    image = image.crop((left, top, left + resolution, top + resolution))
    crop_x = left
    if random_flip and rng.random() < 0.5:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
        crop_x = new_w - left - resolution
    arr = np.asarray(image, dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous(), (top, crop_x)


class TrainingDataset(torch.utils.data.Dataset):
    """Examples -> {"image": (3, R, R) tensor in [0, 1], "prompt": str, "original_size": (h, w),
    "crop_top_left": (y, x)} (the last two are SDXL's micro-conditioning, recorded for every family).

    `set_epoch` reseeds the augmentation so example i of epoch e always gets the same crop and flip.
    `class_examples` (DreamBooth prior preservation) are paired with instance examples by index.
    """

    def __init__(self, examples: list[Example], resolution: int, center_crop: bool = False,
                 random_flip: bool = False, seed: int = 0, class_examples: list[Example] | None = None,
                 proportion_empty_prompts: float = 0.0) -> None:
        if not 0.0 <= proportion_empty_prompts <= 1.0:
            raise ValueError(f"--proportion_empty_prompts must be in [0, 1], got {proportion_empty_prompts}")
        self.examples = examples
        self.proportion_empty_prompts = proportion_empty_prompts
        self.class_examples = class_examples or []
        self.resolution = resolution
        self.center_crop = center_crop
        self.random_flip = random_flip
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return max(len(self.examples), len(self.class_examples))

    def _item(self, ex: Example, index: int, salt: int) -> dict[str, Any]:
        rng = random.Random(hash((self.seed, self.epoch, index, salt)))
        picture = ex.load()
        image, crop = transform_image_with_crop(picture, self.resolution, self.center_crop, self.random_flip, rng)
        prompt = ex.caption
        # drawn after the augmentation so that p = 0 leaves every other random stream as it was
        if self.proportion_empty_prompts and salt == 0 and rng.random() < self.proportion_empty_prompts:
            prompt = ""
        # SDXL micro-conditioning: the size before resizing (height, width) and where the crop started
        return {"image": image, "prompt": prompt, "original_size": (picture.height, picture.width),
                "crop_top_left": crop}

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self._item(self.examples[index % len(self.examples)], index, 0)
        if self.class_examples:
            cls = self._item(self.class_examples[index % len(self.class_examples)], index, 1)
            item.update({f"class_{k}": v for k, v in cls.items()})
        return item


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack a batch; DreamBooth class examples go after the instance ones (one forward for both)."""
    keys = ("image", "prompt", "original_size", "crop_top_left")
    columns = {k: [it[k] for it in items] for k in keys}
    if "class_image" in items[0]:
        for k in keys:
            columns[k] += [it[f"class_{k}"] for it in items]
    return {"image": torch.stack(columns["image"]), "prompt": columns["prompt"], "num_instance": len(items),
            "original_sizes": columns["original_size"], "crop_top_lefts": columns["crop_top_left"]}


def shard_batches(num_examples: int, batch_size: int, seed: int, epoch: int, process_index: int,
                  num_processes: int) -> list[list[int]]:
    """This process's batches of one epoch: a seeded permutation, split into global batches, each sharded.

    Only whole global batches are used (the last incomplete one is dropped when there is more than one process)
    so every process runs the same number of steps.
    """
    order = torch.randperm(num_examples, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
    global_batch = batch_size * num_processes
    if num_processes > 1:
        order = order[: len(order) // global_batch * global_batch] or order[:global_batch]
        if len(order) < global_batch:  # fewer examples than one global batch: repeat them
            order = (order * global_batch)[:global_batch]
    batches = []
    for start in range(0, len(order), global_batch):
        chunk = order[start:start + global_batch]
        mine = chunk[process_index * batch_size:(process_index + 1) * batch_size]
        if mine:
            batches.append(mine)
    return batches
