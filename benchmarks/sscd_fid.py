"""Throughput of the evaluator primitives: SSCD embeddings/s and FID-Inception images/s.

Usage::

    python benchmarks/sscd_fid.py                      # CPU, quick (a few batches each)
    python benchmarks/sscd_fid.py --device cuda --images 256 --batch-size 64
    python benchmarks/sscd_fid.py --sscd PATH/sscd_disc_mixup.torchscript.pt --skip-fid

Inputs are random 256 x 256 float images (the IAR decode size); preprocessing (resize to 320 / 299) is
included in the timing, model loading is not. One warm-up batch is run first.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from memprune.evaluators.fid import inception_features
from memprune.evaluators.inception import load_inception
from memprune.evaluators.sscd import load_sscd


def _time(fn, images: torch.Tensor, batch_size: int) -> float:  # noqa: ANN001
    fn(images[:batch_size])  # warm-up (allocators, oneDNN kernels)
    if images.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(0, images.shape[0], batch_size):
        fn(images[i : i + batch_size])
    if images.is_cuda:
        torch.cuda.synchronize()
    return images.shape[0] / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--sscd", default="onnx", help="onnx | auto | PATH to a TorchScript/ONNX file")
    parser.add_argument("--protocol", default="square320", choices=["square320", "short288"])
    parser.add_argument("--inception", default="auto")
    parser.add_argument("--skip-sscd", action="store_true")
    parser.add_argument("--skip-fid", action="store_true")
    args = parser.parse_args()

    torch.manual_seed(0)
    images = torch.rand(args.images, 3, args.size, args.size, device=args.device)
    result: dict[str, object] = {
        "device": args.device,
        "threads": torch.get_num_threads(),
        "images": args.images,
        "batch_size": args.batch_size,
        "input_size": args.size,
    }
    if not args.skip_sscd:
        sscd = load_sscd(args.sscd, device=args.device, protocol=args.protocol)
        result["sscd_backend"] = sscd.backend_id
        result["sscd_protocol"] = args.protocol
        result["sscd_images_per_s"] = round(_time(lambda x: sscd.embed(x, args.batch_size), images, args.batch_size), 2)
    if not args.skip_fid:
        model = load_inception(args.inception, device=args.device)
        result["inception_images_per_s"] = round(
            _time(lambda x: inception_features(model, x, args.batch_size), images, args.batch_size), 2
        )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
