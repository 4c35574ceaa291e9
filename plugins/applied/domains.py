"""Image domains for domain adaptation and transfer learning, built offline and reproducibly from a seed.

A *domain* is a base dataset seen through a transform:

- ``digits``: scikit-learn's 8x8 digits upsampled (bilinear) to ``size`` x ``size`` (fixed train/test split of
  ``otbench.data``); ``digits_m``: the same digits blended onto colour photo patches (below).
- ``fashion``: Fashion-MNIST (Debian's package); ``fashion_m``: blended like MNIST-M; ``fashion_inverted``:
  1 - x (a covariate shift: same shapes, flipped intensities); ``fashion_rotated``: rotated by 90 degrees.
- ``mnist`` / ``mnist_m``: MNIST from ``path`` (IDX files; no offline copy exists), plain or blended;
  ``usps``: USPS converted to IDX layout, from ``path``; ``svhn``: SVHN's ``train_32x32.mat`` /
  ``test_32x32.mat`` from ``path`` (colour). All are resized to ``size`` x ``size``.

The blend is the MNIST-M recipe (Ganin & Lempitsky 2015, which cut patches from BSDS500): for each grey image
d in [0, 1], cut a random ``size`` x ``size`` patch p from a random colour photograph and output |p - d| per
channel. Our photographs are the colour images that ship inside scikit-image's wheel (``PHOTOS``, read from the
package folder, never downloaded). Patches and the choice of images are drawn from the seed.

``domain_pair`` splits a base dataset's training images into two disjoint halves when source and target share
it (so that the target is never a re-coloured copy of a source image) and brings both sides to the same number
of channels (grey replicated to 3 when the other side is colour). Everything is cached per process.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from otbench.data import DatasetMissing, load_digits, load_fashion_mnist, load_idx_dataset, load_mnist
from otbench.sampling import derive_seed

__all__ = ["DOMAINS", "PHOTOS", "DomainPair", "domain_pair", "load_domain", "blend_onto_photos", "photo_bank"]

#: colour photographs inside scikit-image's wheel (skimage/data/), the only ones used: nothing is downloaded
PHOTOS = ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "ihc.png", "motorcycle_left.png")

#: domain name -> (base dataset, transform)
DOMAINS = {
    "digits": ("digits", None), "digits_m": ("digits", "blend"),
    "fashion": ("fashion", None), "fashion_m": ("fashion", "blend"),
    "fashion_inverted": ("fashion", "invert"), "fashion_rotated": ("fashion", "rotate90"),
    "mnist": ("mnist", None), "mnist_m": ("mnist", "blend"),
    "usps": ("usps", None), "svhn": ("svhn", None),
}


@functools.lru_cache(maxsize=1)
def photo_bank() -> tuple[torch.Tensor, ...]:
    """The allow-listed photographs as float32 ``[3, H, W]`` tensors in [0, 1] (read once per process)."""
    import skimage
    from skimage.io import imread

    folder = Path(skimage.__file__).parent / "data"
    photos = []
    for name in PHOTOS:
        path = folder / name
        if not path.is_file():
            continue  # a wheel without this file: use the others
        img = np.asarray(imread(path))
        if img.ndim != 3 or img.shape[2] < 3:
            continue
        photos.append(torch.from_numpy(img[..., :3].astype(np.float32) / 255.0).permute(2, 0, 1).contiguous())
    if len(photos) < 2:
        raise DatasetMissing(f"need at least 2 of the colour photographs {PHOTOS} in {folder} (scikit-image's wheel)")
    return tuple(photos)


def blend_onto_photos(images: torch.Tensor, seed: int) -> torch.Tensor:
    """MNIST-M recipe: |patch - image| per channel, with a random photo patch per image. ``[N, 1, H, W]`` -> ``[N, 3, H, W]``."""
    photos = photo_bank()
    n, _, h, w = images.shape
    rng = np.random.default_rng(derive_seed(seed, "blend"))
    which = rng.integers(len(photos), size=n)
    out = torch.empty(n, 3, h, w, dtype=torch.float32)
    for i in range(n):
        photo = photos[which[i]]
        top = int(rng.integers(photo.shape[1] - h + 1))
        left = int(rng.integers(photo.shape[2] - w + 1))
        patch = photo[:, top:top + h, left:left + w]
        out[i] = (patch - images[i]).abs()
    return out


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)


def _load_svhn(split: str, path: str | os.PathLike | None) -> tuple[torch.Tensor, torch.Tensor]:
    from scipy.io import loadmat

    folder = Path(path or os.environ.get("OTBENCH_SVHN", ""))
    file = folder / f"{split}_32x32.mat"
    if not path and not os.environ.get("OTBENCH_SVHN") or not file.is_file():
        raise DatasetMissing(f"SVHN ({split}) not found: looked for {file}. Pass path= (or set $OTBENCH_SVHN) to a "
                             "folder with train_32x32.mat / test_32x32.mat from the SVHN site.")
    mat = loadmat(file)
    x = torch.from_numpy(mat["X"].astype(np.float32) / 255.0).permute(3, 2, 0, 1).contiguous()
    y = torch.from_numpy(mat["y"].reshape(-1).astype(np.int64) % 10)  # SVHN labels the digit 0 as 10
    return x, y


def _load_base(base: str, split: str, path: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    if base == "digits":
        return load_digits(split)
    if base == "fashion":
        return load_fashion_mnist(split, path)
    if base == "mnist":
        return load_mnist(split, path)
    if base == "usps":
        return load_idx_dataset("USPS", split, path, env_var="OTBENCH_USPS",
                                install_hint="Pass path= (or set $OTBENCH_USPS) to a folder with USPS in IDX layout.")
    if base == "svhn":
        return _load_svhn(split, path)
    raise ValueError(f"unknown base dataset {base!r}")


def _subset(n_total: int, n: int | None, half: int | None, seed: int, tag: str) -> np.ndarray:
    """Indices: a seeded permutation, cut into halves (``half`` 0 or 1) when asked, then the first ``n``."""
    perm = np.random.default_rng(derive_seed(seed, "subset", tag)).permutation(n_total)
    if half is not None:
        perm = perm[: n_total // 2] if half == 0 else perm[n_total // 2:]
    if n is not None:
        if n > len(perm):
            raise ValueError(f"asked for {n} images but only {len(perm)} are available ({tag})")
        perm = perm[:n]
    return np.sort(perm)


@functools.lru_cache(maxsize=32)
def _load_domain_cached(name: str, split: str, seed: int, n: int | None, size: int, path: str | None,
                        half: int | None, classes: tuple[int, ...] | None) -> tuple[torch.Tensor, torch.Tensor]:
    base, transform = DOMAINS[name]
    x, y = _load_base(base, split, path)
    if classes is not None:
        keep = torch.isin(y, torch.as_tensor(classes, dtype=torch.int64))
        x, y = x[keep], y[keep]
    # the subset depends on the base dataset, not on the transform: digits (half 0) and digits_m (half 1)
    # drawn with the same seed are disjoint
    idx = torch.from_numpy(_subset(len(y), n, half, seed, f"{base}/{split}/{classes}"))
    x, y = _resize(x[idx], size), y[idx].clone()
    if transform == "blend":
        if x.shape[1] != 1:
            raise ValueError(f"{name}: the blend needs grey images, got {x.shape[1]} channels")
        x = blend_onto_photos(x, derive_seed(seed, name, split, str(half)))
    elif transform == "invert":
        x = 1.0 - x
    elif transform == "rotate90":
        x = torch.rot90(x, 1, dims=(2, 3)).contiguous()
    return x.contiguous(), y


def load_domain(name: str, split: str = "train", seed: int = 0, n: int | None = None, size: int = 28,
                path: str | os.PathLike | None = None, half: int | None = None,
                classes: tuple[int, ...] | list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``[N, C, size, size]`` in [0, 1] and int64 labels of domain ``name`` (see DOMAINS).

    ``n``: keep that many (a seeded choice; None keeps all); ``half``: 0 or 1 keeps one of two disjoint halves
    of the split (seeded); ``classes``: keep those labels only (labels are not renumbered). The result is
    cached per process and must not be modified in place.
    """
    if name not in DOMAINS:
        raise ValueError(f"unknown domain {name!r}; known: {sorted(DOMAINS)}")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if half not in (None, 0, 1):
        raise ValueError(f"half must be None, 0 or 1, got {half!r}")
    cls = tuple(sorted(int(c) for c in classes)) if classes is not None else None
    return _load_domain_cached(name, split, int(seed), None if n is None else int(n), int(size),
                               None if path is None else str(path), half, cls)


@dataclass
class DomainPair:
    """Source and target images (``[N, C, H, W]``, the same C on both sides) with labels, per split."""

    source_train: tuple[torch.Tensor, torch.Tensor]
    target_train: tuple[torch.Tensor, torch.Tensor]
    source_test: tuple[torch.Tensor, torch.Tensor]
    target_test: tuple[torch.Tensor, torch.Tensor]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.source_train[0].shape[1:])  # type: ignore[return-value]


def _to_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    return x if x.shape[1] == channels else x.expand(-1, channels, -1, -1).contiguous()


def domain_pair(source: str, target: str, seed: int = 0, n_source: int | None = None,
                n_target: int | None = None, n_test: int | None = None, size: int = 28,
                source_path: str | None = None, target_path: str | None = None,
                source_classes: tuple[int, ...] | None = None,
                target_classes: tuple[int, ...] | None = None) -> DomainPair:
    """Train and test splits of a source and a target domain, disjoint when they share a base dataset.

    Training images of a shared base dataset are cut in two halves (source half 0, target half 1); the test
    splits are the base test split seen through each domain's transform (with independent patch draws). The
    class filters make label-shift pairs (e.g. Fashion-MNIST classes 0-4 -> 5-9): disjoint classes are
    already disjoint images, so the halves are only cut when the class sets overlap.
    """
    for name in (source, target):
        if name not in DOMAINS:
            raise ValueError(f"unknown domain {name!r}; known: {sorted(DOMAINS)}")
    same_base = DOMAINS[source][0] == DOMAINS[target][0]
    if same_base and source_classes is not None and target_classes is not None:
        same_base = bool(set(source_classes) & set(target_classes))
    halves = (0, 1) if same_base else (None, None)
    src_tr = load_domain(source, "train", seed, n_source, size, source_path, halves[0], source_classes)
    tgt_tr = load_domain(target, "train", seed, n_target, size, target_path, halves[1], target_classes)
    src_te = load_domain(source, "test", derive_seed(seed, "source_test"), n_test, size, source_path, None,
                         source_classes)
    tgt_te = load_domain(target, "test", derive_seed(seed, "target_test"), n_test, size, target_path, None,
                         target_classes)
    channels = max(x.shape[1] for x, _ in (src_tr, tgt_tr))
    fix = lambda pair: (_to_channels(pair[0], channels), pair[1])  # noqa: E731
    return DomainPair(fix(src_tr), fix(tgt_tr), fix(src_te), fix(tgt_te))
