"""Fine-tuning a 2D-only AVLnet on image + spoken caption pairs (extensions.md §4, AVLnet
Table 2): the image goes through ResNet-152 (its 2048-d layer4 mean, L2-normalised as a 2D
stream: a one-frame "video" whose max pool over time is the frame itself) into the video head;
the caption through the audio tower; the MMS loss of the audio-video model pairs them.

The visual encoder is `frozen` (its features are computed once and cached), `layer4` (only the
last stage trained: the CPU demo; the frozen stem's outputs are cached when they fit) or `all`
(the paper, which trains the whole encoder). BatchNorm of the frozen stages keeps its running
statistics; that of the trained stages uses batch statistics while training (encoder_bn train)
or keeps its running ones (encoder_bn frozen).
On CUDA, bf16 autocast (precision auto)."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from models.avlnet import AVLnet, video_input
from models.losses import MMS
from models.resnet2d import ResNet152Features
from pipeline.evaluate.metrics import chance, metrics_of, ranks_from_embeddings
from pipeline.features.weights import load_backbone
from pipeline.images.load import normalize_images
from pipeline.config import ImagesParams
from pipeline.learn.train import TrainError, _check_visual, load_checkpoint, load_model_state

log = logging.getLogger(__name__)

# AVLnet Table 2, Places Audio Captions 400k (English), R@1/5/10
PAPER = {"audio_to_image": (44.8, 76.9, 86.4), "image_to_audio": (42.8, 76.2, 84.8)}
PAPER_RESDAVENET = {"audio_to_image": (27.6, 58.4, 71.6), "image_to_audio": (21.8, 55.1, 69.0)}
CACHE_BYTES = 2e9     # frozen-stem outputs are cached when they take at most this


class ImageEncoder(nn.Module):
    """ResNet-152 split into a frozen prefix and a trained trunk: (B, 3, H, W) normalised RGB
    -> prefix -> trunk -> (B, 2048) spatial mean of layer4."""

    def __init__(self, net: ResNet152Features, trained: str, bn: str = "train"):
        super().__init__()
        self.net, self.trained, self.bn = net, trained, bn
        net.requires_grad_(False)
        if trained == "all":
            net.requires_grad_(True)
        elif trained == "layer4":
            net.layer4.requires_grad_(True)
        elif trained != "frozen":
            raise ValueError(f"unknown encoder mode {trained!r}; choose frozen, layer4 or all")
        net.fc.requires_grad_(False)          # kept for strict loading, never used

    def train(self, mode: bool = True) -> "ImageEncoder":
        super().train(mode)
        self.net.eval()                       # the frozen stages: running statistics always
        if mode and self.bn == "train" and self.trained != "frozen":
            # the trained stages' BatchNorm on batch statistics (updating the running ones):
            # with frozen statistics the trained random-init layer4 drifted towards one common
            # feature direction on the demo (every image embedded alike), so they train
            (self.net if self.trained == "all" else self.net.layer4).train()
        return self

    def prefix(self, x: torch.Tensor) -> torch.Tensor:
        """The frozen part: frozen -> (B, 2048) features; layer4 -> (B, 1024, H/16, W/16);
        all -> x itself."""
        n = self.net
        if self.trained == "all":
            return x
        h = n.layer3(n.layer2(n.layer1(n.maxpool(n.relu(n.bn1(n.conv1(x)))))))
        return n.layer4(h).mean(dim=(2, 3)) if self.trained == "frozen" else h

    def trunk(self, h: torch.Tensor) -> torch.Tensor:
        """prefix output -> (B, 2048)."""
        if self.trained == "frozen":
            return h
        if self.trained == "layer4":
            return self.net.layer4(h).mean(dim=(2, 3))
        return self.net(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(self.prefix(x))


class ImageAVLnet(nn.Module):
    """A 2D-only AVLnet with its image encoder: image (B, 3, H, W) normalised -> (B, D);
    caption (B, 40, T) log-Mel + (B,) lengths -> (B, D)."""

    def __init__(self, encoder: ImageEncoder, avlnet: AVLnet):
        super().__init__()
        if avlnet.visual != "2d":
            raise TrainError(f"images need a 2D-only AVLnet (visual 2d), got {avlnet.visual!r}")
        self.encoder, self.avlnet = encoder, avlnet
        avlnet.masked_pooling = True          # true-length pooling (the reference's fine-tuning)

    def encode_feature(self, f: torch.Tensor) -> torch.Tensor:
        """(B, 2048) encoder output -> (B, D): L2-normalised as a 2D stream, then GU_video."""
        return self.avlnet.encode_video(video_input(f, None))

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode_feature(self.encoder(x))

    def encode_audio(self, spec: torch.Tensor, nframes: torch.Tensor) -> torch.Tensor:
        return self.avlnet.encode_audio(spec, nframes)


def build(p: ImagesParams, device: torch.device | str = "cpu", encoder: str | None = None
          ) -> tuple[ImageAVLnet, dict]:
    """The model of `p`: ResNet-152 (p.weights; `encoder`: frozen, layer4 or all, default
    p.encoder) + AVLnet (p.init: a checkpoint path, or none: fresh 2D-only) -> (model on `device`,
    recipe of the encoder weights). TrainError for a checkpoint that is not 2D-only."""
    net, recipe = load_backbone("resnet152", p.weights, weights_dir=p.weights_dir)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(p.seed)
        if p.init == "none":
            avl = AVLnet(p.embed_dim, "gating", tuple(p.audio_widths), p.video_norm, "2d")
        else:
            state, _ = load_checkpoint(Path(p.init), known=None)
            cfg = state.get("config") or {}
            cfg = cfg.get("model", cfg)
            _check_visual(state, Path(p.init), "2d")
            avl = AVLnet(cfg.get("embed_dim", p.embed_dim), cfg.get("head", "gating"),
                         tuple(cfg.get("audio_widths", p.audio_widths)),
                         cfg.get("video_norm", p.video_norm), "2d")
            load_model_state(avl, state, Path(p.init))
    return (ImageAVLnet(ImageEncoder(net, encoder or p.encoder, p.encoder_bn), avl).to(device),
            recipe)


@torch.no_grad()
def prefix_outputs(model: ImageAVLnet, images: np.ndarray, device: torch.device,
                   batch: int = 32) -> torch.Tensor | None:
    """The frozen prefix of every image ((N, 3, S, S) uint8) on `device`, or None when the
    encoder is fully trained or they would not fit CACHE_BYTES (then computed per batch)."""
    enc = model.encoder
    if enc.trained == "all":
        return None
    s = images.shape[-1]
    per = 2048 * 4 if enc.trained == "frozen" else 1024 * (-(-s // 16)) ** 2 * 4
    if per * len(images) > CACHE_BYTES:
        return None
    enc.eval()
    out = [enc.prefix(normalize_images(torch.from_numpy(np.array(images[i:i + batch]))
                                       .to(device)))
           for i in range(0, len(images), batch)]
    return torch.cat(out) if out else torch.empty(0)


def _autocast(p: ImagesParams, device: torch.device) -> torch.dtype | None:
    if p.precision == "bf16" or (p.precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def rows_of(arr: np.ndarray | torch.Tensor, idx: torch.Tensor, device: torch.device
            ) -> torch.Tensor:
    """Rows `idx` of `arr` (a tensor, or a numpy array / memmap read in increasing row order)
    as a tensor on `device`, in idx's order."""
    if isinstance(arr, torch.Tensor):
        return arr[idx.to(arr.device)].to(device)
    i = idx.cpu().numpy()
    order = np.argsort(i, kind="stable")
    out = np.empty((len(i), *arr.shape[1:]), arr.dtype)
    out[order] = arr[i[order]]
    return torch.from_numpy(out).to(device)


def _features(model, idx, images, cached, device) -> torch.Tensor:
    if cached is not None:
        return model.encoder.trunk(cached[idx])
    return model.encoder(normalize_images(rows_of(images, idx, device)))


def train_step(model: ImageAVLnet, opt: torch.optim.Optimizer, loss_fn: nn.Module,
               idx: torch.Tensor, images: np.ndarray, cached: torch.Tensor | None,
               spec: torch.Tensor, nframes: torch.Tensor, device: torch.device,
               amp: torch.dtype | None = None) -> float:
    """One Adam step on the pairs `idx` -> the MMS loss. spec (N, 40, F) the caption cache
    (a memmap, read a batch at a time, or a tensor), nframes (N,) on `device`; images the uint8
    cache; cached the prefix outputs (or None)."""
    model.train()
    with torch.autocast(device.type, amp, enabled=amp is not None):
        v = model.encode_feature(_features(model, idx, images, cached, device))
        a = model.encode_audio(rows_of(spec, idx, device).float(), nframes[idx])
        loss = loss_fn(a.float(), v.float())
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.detach())


@torch.no_grad()
def embed(model: ImageAVLnet, idx: np.ndarray, images: np.ndarray, cached, spec, nframes,
          device: torch.device, batch: int = 64, amp: torch.dtype | None = None
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """(audio (n, D), image (n, D)) embeddings of the pairs `idx`, eval mode, float32 CPU."""
    model.eval()
    a_out, v_out = [], []
    for s in range(0, len(idx), batch):
        b = torch.as_tensor(idx[s:s + batch], device=device)
        with torch.autocast(device.type, amp, enabled=amp is not None):
            v_out.append(model.encode_feature(_features(model, b, images, cached, device))
                         .float().cpu())
            a_out.append(model.encode_audio(rows_of(spec, b, device).float(), nframes[b])
                         .float().cpu())
    return torch.cat(a_out), torch.cat(v_out)


def recall(audio: torch.Tensor, image: torch.Tensor, labels: np.ndarray | None = None
           ) -> dict[str, float]:
    """Row i of both = pair i -> {audio_to_image_R@1/5/10, image_to_audio_R@1/5/10, median and
    mean ranks, n} (pipeline/evaluate/metrics.py, pessimistic ties) plus chance_R@K = K/n; with
    `labels` (pair i shows labels[i]) also <direction>_label_R@K (label_recall) and
    chance_label_R@K."""
    m = metrics_of({"audio_to_image": ranks_from_embeddings(audio, image).numpy(),
                    "image_to_audio": ranks_from_embeddings(image, audio).numpy()})["available"]
    m |= {f"chance_{k}": v for k, v in chance(len(audio)).items()}
    if labels is not None:
        labels = np.asarray(labels)
        for d, (q, items) in {"audio_to_image": (audio, image),
                              "image_to_audio": (image, audio)}.items():
            m |= {f"{d}_label_R@{k}": v for k, v in label_recall(q, items, labels).items()}
        m |= {f"chance_label_R@{k}": v for k, v in label_chance(labels).items()}
    return m


def label_recall(query: torch.Tensor, items: torch.Tensor, labels: np.ndarray,
                 ks: tuple[int, ...] = (1, 5, 10)) -> dict[int, float]:
    """Row i of both = pair i, showing labels[i] -> {K: share of the queries whose K most
    similar items include one with the query's label (the pair itself counts)}. Ties are
    ranked pessimistically, as in the pair recall: an item of another label scoring as high
    as the best one of the query's label comes before it."""
    sim = (query @ items.T).double().numpy()
    same = labels[None, :] == labels[:, None]
    best = np.where(same, sim, -np.inf).max(axis=1)
    ahead = (np.where(same, -np.inf, sim) >= best[:, None]).sum(axis=1)
    return {k: float((ahead < k).mean()) for k in ks}


def label_chance(labels: np.ndarray, ks: tuple[int, ...] = (1, 5, 10)) -> dict[int, float]:
    """label_recall's expectation for a random ranking: per query with m of the n items
    sharing its label, 1 - C(n - m, K) / C(n, K), averaged."""
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    m, n = counts[inverse].astype(float), len(labels)
    out = {}
    for k in ks:
        miss = np.ones_like(m)
        for i in range(min(k, n)):
            miss *= np.clip((n - m - i) / (n - i), 0, None)
        out[k] = float((1 - miss).mean())
    return out


def finetune(p: ImagesParams, cache: dict, train_ids: list[str], val_ids: list[str],
             out_dir: Path | None = None, encoder: str | None = None,
             labels: dict[str, str] | None = None) -> dict:
    """Fine-tunes with the encoder `encoder` (frozen, layer4 or all; default p.encoder) on the
    decoded `cache` (load.open_cache) pairs `train_ids`, evaluates on `val_ids` before and
    after -> {"before": metrics, "after": metrics, "losses", "seconds", ...}; with out_dir,
    writes model.pt (encoder + AVLnet state, params) and metrics.json. With `labels` (pair id
    -> what it shows) for every val pair, the metrics add the label recall."""
    device = torch.device("cuda" if p.device == "cuda" or (p.device == "auto" and
                                                           torch.cuda.is_available()) else "cpu")
    if p.threads:
        torch.set_num_threads(p.threads)
    t0 = time.perf_counter()
    pos = {pid: i for i, pid in enumerate(cache["ids"])}
    missing = [i for i in train_ids + val_ids if i not in pos]
    if missing:
        raise TrainError(f"{len(missing)} pair(s) not in the decoded cache, e.g. {missing[0]}")
    if len(train_ids) < 2 or not val_ids:
        raise TrainError(f"need at least 2 train and 1 val pairs, got {len(train_ids)} and "
                         f"{len(val_ids)}")
    encoder = encoder or p.encoder
    model, recipe = build(p, device, encoder)
    images, amp = cache["images"], _autocast(p, device)
    spec = cache["spec"]          # a memmap: a batch at a time (Places: ~65 GB of float16)
    nframes = torch.from_numpy(np.array(cache["nframes"])).to(device)
    cached = prefix_outputs(model, images, device)
    t_cache = time.perf_counter() - t0
    tr = np.array([pos[i] for i in train_ids])
    va = np.array([pos[i] for i in val_ids])
    va_labels = (np.array([labels[i] for i in val_ids])
                 if labels and all(labels.get(i) is not None for i in val_ids) else None)
    before = recall(*embed(model, va, images, cached, spec, nframes, device, amp=amp),
                    va_labels)
    enc_params = [q for q in model.encoder.parameters() if q.requires_grad]
    groups = [{"params": list(model.avlnet.parameters()), "lr": p.lr}]
    if enc_params:
        groups.append({"params": enc_params, "lr": p.encoder_lr})
    opt = torch.optim.Adam(groups)
    loss_fn = MMS(p.mms_margin)
    g = torch.Generator().manual_seed(p.seed)
    losses: list[float] = []
    curve: list[dict] = []
    for epoch in range(p.epochs):
        perm = tr[torch.randperm(len(tr), generator=g).numpy()]
        for s in range(0, len(perm) - 1, p.batch):
            idx = torch.as_tensor(perm[s:s + p.batch], device=device)
            if len(idx) < 2:
                continue
            losses.append(train_step(model, opt, loss_fn, idx, images, cached, spec, nframes,
                                     device, amp))
        log.info("epoch %d/%d: loss %.4f (%.0f s)", epoch + 1, p.epochs, losses[-1],
                 time.perf_counter() - t0)
        if p.eval_every and (epoch + 1) % p.eval_every == 0 and epoch + 1 < p.epochs:
            m = recall(*embed(model, va, images, cached, spec, nframes, device, amp=amp),
                       va_labels)
            curve.append({"epoch": epoch + 1, "loss": losses[-1]} | m)
            log.info("epoch %d val R@10 A->I %.3f I->A %.3f", epoch + 1,
                     m["audio_to_image_R@10"], m["image_to_audio_R@10"])
    after = recall(*embed(model, va, images, cached, spec, nframes, device, amp=amp),
                   va_labels)
    out = {"encoder": encoder, "before": before, "after": after, "losses": losses,
           "curve": curve,
           "seconds": time.perf_counter() - t0, "cache_seconds": t_cache,
           "n_train": len(tr), "n_val": len(va), "device": str(device),
           "weights": recipe, "paper_table2": PAPER}
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        from pipeline.config import to_dict
        torch.save({"model": model.state_dict(), "params": to_dict(p), "steps": len(losses)},
                   out_dir / "model.pt")
        (out_dir / "metrics.json").write_text(json.dumps(
            {k: v for k, v in out.items() if k != "losses"}, indent=2, sort_keys=True) + "\n")
    return out
