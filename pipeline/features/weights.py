"""Backbone weights: a weights param (imagenet | kinetics | a path | random[:SEED]) -> a frozen,
eval-mode backbone and the recipe entries that say which weights made the features."""
from __future__ import annotations

import logging
import os
import pickle
import shutil
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from models.resnet2d import MEAN as RGB_MEAN
from models.resnet2d import STD as RGB_STD
from models.resnet2d import ResNet152Features, load_resnet_state
from models.resnext3d import StateDictError, load_resnext_state, resnext101
from pipeline.data.sources import sha256_file

log = logging.getLogger(__name__)

DEFAULT_WEIGHTS_DIR = Path("data/weights")
RESNET152_URL = "https://download.pytorch.org/models/resnet152-394f9c45.pth"
HARA_PAGE = "https://github.com/kenshohara/3D-ResNets-PyTorch"
HARA_FOLDER = "https://drive.google.com/drive/folders/1zvl89AgFAApbH0At-gMuZSeQB_LpNP-M"
MIECH_URL = "https://www.rocq.inria.fr/cluster-willow/amiech/howto100m/models/resnext101.pth"
CLIP_MEAN = (110.6, 103.2, 96.3)   # features.md 3D: 0..255 input minus this mean, std 1
DOWNLOAD_TIMEOUT_S = 60.0


class WeightsError(RuntimeError):
    """Weights that cannot be resolved: unknown name, missing official file, bad hash or format."""


@dataclass(frozen=True)
class Official:
    """An official weights file and how to get it."""

    filenames: tuple[str, ...]   # accepted names in the weights folder, preferred first
    sha256_prefix: str | None    # torchvision puts the first 8 hex digits of sha256 in the name
    url: str | None              # direct download; None: must be fetched by hand
    source: str                  # where it comes from, for the recipe and the error message
    note: str = ""               # appended to the missing-file message


BACKBONES: dict[str, tuple[Callable[[], nn.Module], Callable[[nn.Module, Any], None]]] = {
    "resnet152": (ResNet152Features, load_resnet_state),
    "resnext101": (resnext101, load_resnext_state),
}
OFFICIAL: dict[tuple[str, str], Official] = {
    ("resnet152", "imagenet"): Official(
        ("resnet152-394f9c45.pth",), "394f9c45", RESNET152_URL,
        f"torchvision ResNet152_Weights.IMAGENET1K_V1, {RESNET152_URL}"),
    # Google Drive only; no published sha256, so the file is checked by strict loading alone
    ("resnext101", "kinetics"): Official(
        ("resnext-101-kinetics.pth", "resnext101.pth"), None, None,
        f"Hara et al. 3D-ResNets-PyTorch ({HARA_PAGE}, 'Old pretrained models' Google Drive "
        f"folder {HARA_FOLDER})",
        f"; Miech's re-saved copy resnext101.pth ({MIECH_URL}) in the same folder also works"),
}


def resolve_weights(backbone: str, weights: str, *,
                    weights_dir: str | Path = DEFAULT_WEIGHTS_DIR,
                    download: bool = True,
                    checked: bool = False) -> tuple[Path | None, dict[str, str]]:
    """backbone 'resnet152' | 'resnext101', weights 'imagenet' | 'kinetics' | a file path |
    'random[:SEED]' -> (file to load, None for random weights; recipe) where recipe is
    {backbone, weights, weights_sha256 (hex, or 'random-seed-N'), weights_source}.

    Official files are looked up in `weights_dir` (and torch.hub's checkpoints folder for the
    torchvision file, i.e. $TORCH_HOME/hub/checkpoints); the torchvision one is downloaded into
    `weights_dir` when absent. Raises WeightsError with what to put where when that fails.
    Cheap apart from hashing the file: a driver resolves (and downloads) once for all workers,
    which then pass `checked=True` to skip hashing what the driver hashed (~1 s per worker; the
    recipe's weights_sha256 is then 'checked by the driver')."""
    if backbone not in BACKBONES:
        raise WeightsError(f"unknown backbone {backbone!r}; choose one of {sorted(BACKBONES)}")
    recipe = {"backbone": backbone, "weights": weights}
    if _is_random(weights):
        seed = _seed(weights)
        recipe.update(weights_sha256=f"random-seed-{seed}",
                      weights_source=f"random init (seed {seed}) + BatchNorm statistics calibrated "
                                     "on synthetic input; smoke runs and the demo only, "
                                     "not the published features")
        return None, recipe
    official = next((o for (b, n), o in OFFICIAL.items() if n == weights), None)
    if official is not None:
        if (backbone, weights) not in OFFICIAL:
            owner = next(b for b, n in OFFICIAL if n == weights)
            raise WeightsError(f"weights {weights!r} are for {owner}, not {backbone}")
        path, digest = _official_file(official, Path(weights_dir), download, checked)
        source = f"{path.name}: {official.source}"
    else:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise WeightsError(f"weights {weights!r}: neither a name (imagenet, kinetics, "
                               f"random[:SEED]) nor an existing file")
        source, digest = str(path.resolve()), None
    recipe.update(weights_sha256=digest or ("checked by the driver" if checked
                                            else sha256_file(path)), weights_source=source)
    return path, recipe


def _is_random(weights: str) -> bool:
    return weights == "random" or weights.startswith("random:")


def for_workers(weights: str) -> str:
    """`weights` as a process started in another folder (a dask worker of another machine)
    names the same thing: a file path made absolute; names (official, random[:SEED]) as
    they are."""
    if _is_random(weights) or any(n == weights for _, n in OFFICIAL):
        return weights
    return str(Path(weights).expanduser().absolute())


def load_backbone(backbone: str, weights: str, *, weights_dir: str | Path = DEFAULT_WEIGHTS_DIR,
                  download: bool = True, checked: bool = False,
                  device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, str]]:
    """resolve_weights, then builds and loads the model -> (frozen eval-mode model on `device`,
    recipe). Raises WeightsError (file that does not load strictly, see resolve_weights)."""
    path, recipe = resolve_weights(backbone, weights, weights_dir=weights_dir, download=download,
                                   checked=checked)
    build, load = BACKBONES[backbone]
    if path is None:
        model = random_backbone(backbone, _seed(weights))
    else:
        model = build()
        try:
            load(model, torch.load(path, map_location="cpu", weights_only=True))
        except (StateDictError, RuntimeError, OSError, EOFError, ValueError,
                pickle.UnpicklingError) as e:
            raise WeightsError(f"cannot load {path} into {backbone}: {e}") from e
    log.info("%s weights %s (%s)", backbone, weights, recipe["weights_sha256"])
    return freeze(model).to(device), recipe


def freeze(model: nn.Module) -> nn.Module:
    """No gradients, eval mode (BatchNorm uses its running statistics)."""
    model.requires_grad_(False)
    return model.eval()


def _seed(weights: str) -> int:
    try:
        return int(weights.partition(":")[2] or 0)
    except ValueError:
        raise WeightsError(f"weights {weights!r}: the seed after 'random:' must be an integer")


def _official_file(official: Official, weights_dir: Path, download: bool,
                   checked: bool = False) -> tuple[Path, str | None]:
    """(path, sha256 when checked) of the official file, found or downloaded, else WeightsError."""
    dirs = [weights_dir]
    if official.url:   # torchvision's own cache, as torch.hub.load_state_dict_from_url uses it
        dirs.append(Path(torch.hub.get_dir()) / "checkpoints")
    path = next((d / n for n in official.filenames for d in dirs if (d / n).is_file()), None)
    want = weights_dir / official.filenames[0]
    why = ""
    if path is None and official.url and download:
        try:
            _download(official.url, want)
            path = want
        except OSError as e:   # URLError is an OSError
            why = f" (download from {official.url} failed: {e})"
    if path is None:
        how = (f"download it from {official.url}" if official.url else
               f"it cannot be fetched by script: download it by hand from {official.source}")
        raise WeightsError(f"missing weights file {official.filenames[0]}{why}: {how}, and put it "
                           f"at {want.resolve()} (folder {weights_dir.resolve()}), or pass the "
                           f"file's path as weights{official.note}")
    if official.sha256_prefix and not checked:
        digest = sha256_file(path)
        if not digest.startswith(official.sha256_prefix):
            raise WeightsError(f"{path}: sha256 {digest} does not start with "
                               f"{official.sha256_prefix}, so it is not the official "
                               f"{official.filenames[0]}; delete it and download it again from "
                               f"{official.url}, or pass a custom file as a path")
        return path, digest
    return path, None


def _download(url: str, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    log.info("downloading %s -> %s", url, dest)
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as r, open(part, "wb") as f:
            shutil.copyfileobj(r, f, 1 << 20)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    os.replace(part, dest)   # the hash is checked by the caller, like any found file


# --- random weights ------------------------------------------------------------------------------

def random_backbone(backbone: str, seed: int = 0, *, batches: int = 2,
                    batch_size: int = 2) -> nn.Module:
    """Seeded random init, then BatchNorm running statistics set on seeded synthetic input
    (`batches` x `batch_size` images 224x224 or clips 16x112x112, normalised like real input).
    Without calibration the running stats stay (0, 1) and deep features barely depend on the
    input; with them every layer sees roughly unit-variance activations, as a trained net does.
    Runs on CPU so a seed gives the same weights on every machine."""
    build, _ = BACKBONES[backbone]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build()
    g = torch.Generator().manual_seed(seed + 1)
    make = synthetic_images if backbone == "resnet152" else synthetic_clips
    calibrate_batchnorm(model, [make(batch_size, g) for _ in range(batches)])
    return model


def calibrate_batchnorm(model: nn.Module, inputs: list[torch.Tensor]) -> nn.Module:
    """Resets every BatchNorm's running stats and sets them to the cumulative average over
    train-mode forward passes of `inputs` (momentum None); returns the model in eval mode."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    with torch.no_grad():
        for x in inputs:
            model(x)
    for m, mom in zip(bns, momenta):
        m.momentum = mom
    return model.eval()


def _smooth_noise(shape: tuple[int, ...], g: torch.Generator) -> torch.Tensor:
    """Values in 0..255 mixing coarse and fine random detail; shape (B, C, *spatial)."""
    b, c, *size = shape
    mode = "bilinear" if len(size) == 2 else "trilinear"
    x = torch.zeros(shape)
    for div, w in ((16, 0.6), (4, 0.3), (1, 0.1)):
        low = torch.rand(b, c, *[max(1, s // div) for s in size], generator=g)
        x += w * F.interpolate(low, size=size, mode=mode, align_corners=False)
    return x * 255.0


def synthetic_images(n: int, g: torch.Generator, size: tuple[int, int] = (224, 224)) -> torch.Tensor:
    """(n, 3, H, W) synthetic frames normalised as features.md 2D: x/255, (x - mean)/(std + 1e-8)."""
    x = _smooth_noise((n, 3, *size), g) / 255.0
    mean = torch.tensor(RGB_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(RGB_STD).view(1, 3, 1, 1)
    return (x - mean) / (std + 1e-8)


def synthetic_clips(n: int, g: torch.Generator) -> torch.Tensor:
    """(n, 3, 16, 112, 112) synthetic clips as features.md 3D: 0..255 minus the mean, std 1."""
    return _smooth_noise((n, 3, 16, 112, 112), g) - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1, 1)
