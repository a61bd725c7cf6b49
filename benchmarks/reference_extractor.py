"""The reference extraction recipe as a measuring stick for benchmarks.extract (f); not a product path.

Written from ../shared/spec/features.md to cost what Miech et al.'s video_feature_extractor and
the AVLnet spectrogram script cost on one video: one process per feature type, each with its own
ffmpeg pass (ffmpeg-python, output size from ffprobe), the whole decoded video read into memory
and converted to one float32 tensor, then per-video forwards in batches of 64 (the reference's
--batch_size default, frames for 2D and 16-frame clips for 3D), rows L2-normalised and saved as a
float16 .npy. The audio process decodes 16 kHz mono the same way and runs the log-Mel recipe
(pipeline.features.logmel, the formula the reference's script computes).

    python -m benchmarks.reference_extractor --type 2d|3d|audio --video V --weights W --out F.npy
"""
from __future__ import annotations

import argparse
import math
import sys
import time

import numpy as np

BATCH = 64                 # the reference extractor's --batch_size default (frames / clips)


def _size(video: str, short: int) -> tuple[int, int]:
    """(W, H) of the reference: short side = `short`, integer truncation (features.md)."""
    import ffmpeg
    s = next(s for s in ffmpeg.probe(video)["streams"] if s["codec_type"] == "video")
    w, h = int(s["width"]), int(s["height"])
    return (short, int(h * short / w)) if h >= w else (int(w * short / h), short)


def _frames(stream, width: int, height: int) -> np.ndarray:
    out, _ = stream.output("pipe:", format="rawvideo", pix_fmt="rgb24").run(
        capture_stdout=True, quiet=True)
    return np.frombuffer(out, np.uint8).reshape(-1, height, width, 3)


def _forward(model, x, batch: int):
    """Per-video forwards in batches, rows L2-normalised (eps 1e-12), float16 -> (n, 2048)."""
    import torch
    import torch.nn.functional as F
    out = torch.zeros(len(x), 2048)
    with torch.no_grad():
        for i in range(math.ceil(len(x) / batch)):
            out[i * batch:(i + 1) * batch] = F.normalize(model(x[i * batch:(i + 1) * batch]),
                                                         dim=1, eps=1e-12)
    return out.numpy().astype(np.float16)


def extract_2d(video: str, weights: str) -> np.ndarray:
    import ffmpeg
    import torch
    from models.resnet2d import MEAN, STD, ResNet152Features, load_resnet_state
    model = ResNet152Features()
    load_resnet_state(model, torch.load(weights, map_location="cpu", weights_only=True))
    model.eval()
    w, h = _size(video, 224)
    frames = _frames(ffmpeg.input(video).filter("fps", fps=1).filter("scale", w, h), w, h)
    x = torch.from_numpy(frames.astype("float32")).permute(0, 3, 1, 2) / 255.0
    x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / (torch.tensor(STD).view(1, 3, 1, 1) + 1e-8)
    return _forward(model, x, BATCH)


def extract_3d(video: str, weights: str) -> np.ndarray:
    import ffmpeg
    import torch
    from models.resnext3d import load_resnext_state, resnext101
    from pipeline.features.weights import CLIP_MEAN
    model = resnext101()
    load_resnext_state(model, torch.load(weights, map_location="cpu", weights_only=True))
    model.eval()
    w, h = _size(video, 112)
    stream = (ffmpeg.input(video).filter("fps", fps=24).filter("scale", w, h)
              .filter("crop", 112, 112, int((w - 112) / 2), int((h - 112) / 2)))
    frames = _frames(stream, 112, 112)
    x = torch.from_numpy(frames.astype("float32")).permute(0, 3, 1, 2)       # (T, 3, 112, 112)
    pad = (16 - len(x) % 16) % 16                      # black frames BEFORE the mean (features.md)
    x = torch.cat([x, torch.zeros(pad, 3, 112, 112)])
    x = x.view(-1, 16, 3, 112, 112).transpose(1, 2)                          # (N, 3, 16, 112, 112)
    x = x - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1, 1)
    return _forward(model, x, BATCH)


def extract_audio(video: str) -> np.ndarray:
    import ffmpeg
    from pipeline.features.logmel import logmel
    out, _ = (ffmpeg.input(video).audio.filter("aresample", 16000, resampler="soxr")
              .filter("aformat", sample_fmts="flt", channel_layouts="mono")
              .output("pipe:", format="f32le", acodec="pcm_f32le")
              .run(capture_stdout=True, quiet=True))
    return logmel(np.frombuffer(out, np.float32)).numpy().astype(np.float16)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--type", required=True, choices=["2d", "3d", "audio"])
    ap.add_argument("--video", required=True)
    ap.add_argument("--weights", help="weights file (2d: torchvision resnet152 format; 3d: Hara's)")
    ap.add_argument("--out", required=True, help=".npy file to write")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    if args.type == "audio":
        feats = extract_audio(args.video)
    else:
        feats = (extract_2d if args.type == "2d" else extract_3d)(args.video, args.weights)
    np.save(args.out, feats)
    print(f"{args.type}: {feats.shape} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
