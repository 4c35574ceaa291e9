"""Cost of the generative metrics: feature extraction (dataset CNN, Inception) and the statistics on top.

Prints one table row per measurement: images per second through each feature extractor (torch-fidelity's
modules, CPU and, when present, GPU), and seconds for torch-fidelity's FID / KID / precision-recall on n
feature vectors, and for the exact W1 LP (POT) at the sample sizes the low-dimensional tasks use.

    python benchmarks/fid_speed.py               # n = 1000 features, 8 Inception images
    python benchmarks/fid_speed.py --quick       # n = 500, 4 Inception images
    python benchmarks/fid_speed.py --threads 2 --inception-images 32

Wall-clock figures: on a shared machine they vary with the load; read them as orders of magnitude.
"""

from __future__ import annotations

import argparse
import time

import torch

from otbench.data import load_dataset
from otbench.features import dataset_classifier, extract_features, resolve_extractor, to_uint8
from otbench.metrics.generative import exact_wasserstein, fid_kid_prc


def timed(fn, repeat: int = 1) -> float:
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--inception-images", type=int, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    n = 500 if args.quick else 1000
    n_inc = args.inception_images or (4 if args.quick else 8)
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    rows: list[tuple[str, str, str]] = []

    for dataset in ("digits", "fashion_mnist"):
        start = time.perf_counter()
        net = dataset_classifier(dataset)
        rows.append((f"{dataset}_cnn: load or train", "cpu", f"{time.perf_counter() - start:.2f} s "
                     f"(acc {net.metadata['test_accuracy']:.3f}, trained in {net.metadata['train_seconds']:.1f} s)"))
        x, _ = load_dataset(dataset, "test")
        images = to_uint8(x[:n])
        spec = resolve_extractor("classifier", dataset)
        for dev in devices:
            extract_features(spec, images[:10], dev)  # warm-up
            sec = timed(lambda: extract_features(spec, images, dev))
            rows.append((f"{dataset}_cnn features, {len(images)} images", str(dev),
                         f"{len(images) / sec:,.0f} images/s"))

    start = time.perf_counter()
    spec = resolve_extractor("inception")
    rows.append(("inception weights (convert, or find the cached file)", "cpu", f"{time.perf_counter() - start:.2f} s"))
    x, _ = load_dataset("fashion_mnist", "test")
    images = to_uint8(x[:n_inc])
    for dev in devices:
        extract_features(spec, images[:1], dev)  # builds the module, warm-up
        sec = timed(lambda: extract_features(spec, images, dev))
        rows.append((f"inception features, {n_inc} images", str(dev), f"{sec / n_inc:.3f} s/image"))

    g = torch.Generator().manual_seed(0)
    for d in (128, 2048):
        a, b = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g) + 0.1
        sec = timed(lambda: fid_kid_prc(a, b))
        rows.append((f"FID+KID+PRC (torch-fidelity), n={n}, d={d}", "cpu", f"{sec:.2f} s"))
    for m in (1000, 2000):
        a, b = torch.randn(m, 2, generator=g), torch.randn(m, 2, generator=g)
        rows.append((f"exact W1 LP (POT emd2), n={m}, 2-D", "cpu", f"{timed(lambda: exact_wasserstein(a, b, 1)):.2f} s"))

    width = max(len(r[0]) for r in rows)
    print(f"{'measurement':<{width}}  device  value   (torch threads: {args.threads})")
    for what, dev, value in rows:
        print(f"{what:<{width}}  {dev:<6}  {value}")


if __name__ == "__main__":
    main()
