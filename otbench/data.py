"""Image datasets that exist offline, loaded once per process, never downloaded.

Every loader returns ``(images, labels)``: ``images`` a float32 tensor ``[N, C, H, W]`` with values in
``[0, 1]``, ``labels`` an int64 tensor ``[N]``. Loaders take an explicit path where the data lives in files;
when the files are missing the error names what was looked for, where, and how to install it.

- ``digits``: scikit-learn's 1797 8x8 digits (ship inside the scikit-learn wheel). They have no official split;
  ours is a fixed stratified 75 / 25 split (seed 0), the same on every machine.
- ``fashion_mnist``: Zalando's Fashion-MNIST, 60k train + 10k test at 28x28, as IDX files. Looked for in
  ``path``, then ``$OTBENCH_FASHION_MNIST``, then Debian's ``dataset-fashion-mnist`` package
  (``/usr/share/datasets/fashion-mnist``; ``apt-get install dataset-fashion-mnist``).
- ``mnist`` (and any other IDX dataset such as USPS converted to IDX): same file layout, from ``path`` or
  ``$OTBENCH_MNIST``. No package ships MNIST offline, so there is no default location.
"""

from __future__ import annotations

import functools
import gzip
import os
from pathlib import Path

import numpy as np
import torch

from otbench.api import OTBenchError

__all__ = ["DatasetMissing", "DATASETS", "load_dataset", "load_digits", "load_idx_dataset", "FASHION_MNIST_CLASSES"]

FASHION_MNIST_CLASSES = ("t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker",
                         "bag", "ankle boot")
FASHION_MNIST_DEBIAN = "/usr/share/datasets/fashion-mnist"
SPLITS = ("train", "test")


class DatasetMissing(OTBenchError, FileNotFoundError):
    """A dataset's files are not where they were looked for; the message says where and how to get them."""


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


@functools.lru_cache(maxsize=4)
def _digits_split(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    bunch = sk_load_digits()
    images = bunch.images.astype(np.float32) / 16.0
    idx_train, idx_test = train_test_split(np.arange(len(images)), test_size=0.25, random_state=0,
                                           stratify=bunch.target)
    idx = idx_train if split == "train" else idx_test
    x = torch.from_numpy(images[np.sort(idx)]).unsqueeze(1).contiguous()
    y = torch.from_numpy(bunch.target[np.sort(idx)].astype(np.int64))
    return x, y


def load_digits(split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's digits, ``[N, 1, 8, 8]`` in ``[0, 1]``: 1347 train / 450 test (fixed stratified split)."""
    _check_split(split)
    return _digits_split(split)


_IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
              "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path}: not an IDX file of unsigned bytes (magic {raw[:4]!r})")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: header says {dims} but the file holds {data.size} values (truncated?)")
    return data.reshape(dims)


def _find(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


@functools.lru_cache(maxsize=8)
def _idx_split(folder: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    img_stem, lab_stem = _IDX_FILES[split]
    img_path, lab_path = _find(Path(folder), img_stem), _find(Path(folder), lab_stem)
    assert img_path is not None and lab_path is not None
    images = _read_idx(img_path)
    labels = _read_idx(lab_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(f"{folder}: images {images.shape} and labels {labels.shape} do not match")
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1).contiguous()
    return x, torch.from_numpy(labels.astype(np.int64))


def load_idx_dataset(name: str, split: str = "train", path: str | os.PathLike | None = None,
                     env_var: str | None = None, default: str | None = None,
                     install_hint: str = "") -> tuple[torch.Tensor, torch.Tensor]:
    """An MNIST-layout IDX dataset (``train-images-idx3-ubyte[.gz]`` ...) from the first folder that has it.

    Folders tried in order: ``path``, ``$env_var``, ``default``. A missing dataset raises ``DatasetMissing``
    naming every folder tried and ``install_hint``.
    """
    _check_split(split)
    # an explicit path is the only place looked in: silently reading another copy would hide a typo
    candidates = [str(path)] if path else [str(p) for p in (os.environ.get(env_var) if env_var else None, default) if p]
    stems = _IDX_FILES[split]
    for folder in candidates:
        if all(_find(Path(folder), stem) for stem in stems):
            return _idx_split(str(Path(folder).resolve()), split)
    tried = ", ".join(candidates) if candidates else "(no folder given)"
    how = f" {install_hint}" if install_hint else ""
    raise DatasetMissing(
        f"{name} ({split}) not found: looked for {stems[0]}[.gz] and {stems[1]}[.gz] in {tried}.{how}"
    )


def load_fashion_mnist(split: str = "train", path: str | os.PathLike | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST ``[N, 1, 28, 28]`` in ``[0, 1]`` (60000 train / 10000 test); classes in FASHION_MNIST_CLASSES."""
    return load_idx_dataset(
        "Fashion-MNIST", split, path, env_var="OTBENCH_FASHION_MNIST", default=FASHION_MNIST_DEBIAN,
        install_hint="Install Debian's package (apt-get install dataset-fashion-mnist), or pass path= / set "
                     "$OTBENCH_FASHION_MNIST to a folder with the IDX files.",
    )


def load_mnist(split: str = "train", path: str | os.PathLike | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST in IDX layout from ``path`` or ``$OTBENCH_MNIST`` (no offline copy exists to default to)."""
    return load_idx_dataset(
        "MNIST", split, path, env_var="OTBENCH_MNIST",
        install_hint="No package ships MNIST offline: pass path= or set $OTBENCH_MNIST to a folder with the IDX files.",
    )


DATASETS = {"digits": load_digits, "fashion_mnist": load_fashion_mnist, "mnist": load_mnist}


def load_dataset(name: str, split: str = "train", path: str | os.PathLike | None = None,
                 classes: tuple[int, ...] | list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Load ``name`` (one of DATASETS), optionally keeping only ``classes`` (labels are kept as they are)."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {sorted(DATASETS)}")
    loader = DATASETS[name]
    x, y = loader(split) if name == "digits" else loader(split, path)
    if classes is not None:
        keep = torch.isin(y, torch.as_tensor(list(classes), dtype=torch.int64))
        x, y = x[keep], y[keep]
    return x, y
