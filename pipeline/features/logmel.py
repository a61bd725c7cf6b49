"""AVLnet / DAVEnet log-Mel spectrogram: 16 kHz waveform -> (40, T) dB relative to its loudest bin."""
from __future__ import annotations

import numpy as np
import torch

SAMPLE_RATE = 16000
N_MELS = 40
HOP = 160        # samples (10 ms)
N_FFT = 400      # samples (25 ms); the window has the same length
PAD = N_FFT // 2
F_MIN = 20.0     # Hz
F_MAX = 8000.0   # Hz
PREEMPHASIS = 0.97
AMIN = 1e-10     # power floor before log10
TOP_DB = 80.0    # output floor is -TOP_DB
EMPTY_SAMPLES = 200

# Store attributes (features.md, "Log-Mel spectrogram"): every knob that changes the numbers.
RECIPE = {
    "name": "avlnet-logmel",
    "sample_rate": SAMPLE_RATE,
    "empty_input": f"{EMPTY_SAMPLES} zeros",
    "remove_mean": True,
    "preemphasis": PREEMPHASIS,
    "n_fft": N_FFT,
    "win_length": N_FFT,
    "hop_length": HOP,
    "window": "hamming, symmetric (0.54 - 0.46 cos(2 pi n / 399))",
    "center": True,
    "pad_mode": "reflect",
    "power": 2.0,
    "n_mels": N_MELS,
    "f_min": F_MIN,
    "f_max": F_MAX,
    "mel_scale": "slaney",
    "mel_norm": "slaney (area, 2 / (f[i+2] - f[i]))",
    "db": "10 log10(max(P, 1e-10)) - 10 log10(max(max(P), 1e-10)), floored at -80",
    "amin": AMIN,
    "top_db": TOP_DB,
    "layout": "(40, T) mel x time",
    # float32 STFTs were up to 4.5e-3 dB off the reference on pure tones (its own float32
    # steps: 2.7e-3); float64 gives the exact values (tests/test_logmel.py)
    "arithmetic": "float64 (mean, pre-emphasis, STFT, Mel basis, dB), then float32",
}

_CHUNK_FRAMES = 16384  # STFT frames per chunk: bounds peak memory on hour-long inputs


def frames_for(n_samples: int) -> int:
    """Number of spectrogram frames T for a waveform of `n_samples` samples (10 s -> 1001)."""
    return 1 + n_samples // HOP


def _reflect_index(j: np.ndarray, n: int) -> np.ndarray:
    """Indices into a length-n signal of positions j (may lie outside [0, n)) under np.pad's
    "reflect" mode, also for n <= pad (repeated reflection, period 2(n-1)), which torch's reflect
    padding refuses; the reference pads with numpy."""
    if n == 1:
        return np.zeros_like(j)
    period = 2 * (n - 1)
    j = np.abs(j) % period
    return np.where(j >= n, period - j, j)


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    """Slaney's Mel scale (librosa, htk=False): linear below 1 kHz (200/3 Hz per Mel), then
    logarithmic with 27 Mels per factor 6.4."""
    f = np.asarray(f, np.float64)
    lin = f / (200.0 / 3)
    return np.where(f >= 1000.0, 15.0 + np.log(np.maximum(f, 1e-300) / 1000.0)
                    / (np.log(6.4) / 27.0), lin)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, np.float64)
    return np.where(m >= 15.0, 1000.0 * np.exp((np.log(6.4) / 27.0) * (m - 15.0)),
                    (200.0 / 3) * m)


def mel_fbank() -> np.ndarray:
    """(40, 201) float64 Slaney-scale triangular filters over the rfft bins, area-normalised
    (2 / (f[i+2] - f[i])). Built in float64 throughout: torchaudio's float32 version differs
    by up to ~1e-7 relative, which the dB scale turns into ~1e-6 dB, but float64 keeps every
    step of the recipe at the reference's precision."""
    freqs = np.linspace(0.0, SAMPLE_RATE / 2, N_FFT // 2 + 1)                 # (201,)
    f_pts = _mel_to_hz(np.linspace(_hz_to_mel(F_MIN), _hz_to_mel(F_MAX), N_MELS + 2))
    rising = (freqs[None, :] - f_pts[:-2, None]) / np.diff(f_pts)[:-1, None]
    falling = (f_pts[2:, None] - freqs[None, :]) / np.diff(f_pts)[1:, None]
    fb = np.maximum(0.0, np.minimum(rising, falling))                          # (40, 201)
    return fb * (2.0 / (f_pts[2:] - f_pts[:-2]))[:, None]


def logmel(wave: np.ndarray | torch.Tensor, sample_rate: int = SAMPLE_RATE, *,
           chunk_frames: int = _CHUNK_FRAMES) -> torch.Tensor:
    """Log-Mel spectrogram of a mono waveform, exactly the AVLnet recipe (features.md).

    wave: 1-D (N,) samples at 16 kHz, any float or int dtype: a numpy array (a np.memmap of a
    spooled file works and is read `chunk_frames` STFT frames at a time, so memory does not grow
    with the length beyond the (40, T) float32 result) or a torch tensor (stays on its device).
    Returns float32 (40, T), T = 1 + N // 160, values in [-80, 0] dB relative to the loudest
    (mel band, frame) bin of this waveform. An empty wave is treated as 200 zeros; a silent one
    gives all 0 dB (the 1e-10 floor applies to the reference level too, as in librosa)."""
    if sample_rate != SAMPLE_RATE:
        raise ValueError(f"logmel expects {SAMPLE_RATE} Hz audio, got sample_rate={sample_rate}; "
                         "resample first (the recipe's filters and hop are fixed at 16 kHz)")
    if len(wave.shape) != 1:
        raise ValueError(f"logmel expects a 1-D mono waveform (N,), got shape {tuple(wave.shape)}; "
                         "mix down to mono first")
    device = wave.device if isinstance(wave, torch.Tensor) else torch.device("cpu")
    y = wave if len(wave) else np.zeros(EMPTY_SAMPLES, np.float32)
    n = len(y)

    def samples(a: int, b: int) -> torch.Tensor:   # y[a:b] as float64 on `device`
        if isinstance(y, torch.Tensor):
            return y[a:b].to(torch.float64)
        return torch.from_numpy(np.array(y[a:b], dtype=np.float64)).to(device)

    total = torch.zeros((), dtype=torch.float64, device=device)
    for a in range(0, n, 1 << 22):
        total += samples(a, a + (1 << 22)).sum(dtype=torch.float64)
    mean = total / n

    n_frames = frames_for(n)
    window = torch.hamming_window(N_FFT, periodic=False, dtype=torch.float64, device=device)
    fbank = torch.from_numpy(mel_fbank()).to(device)
    mel = torch.empty(N_MELS, n_frames, dtype=torch.float64, device=device)  # (40, T) power
    # Frames are independent: frames s..e-1 read padded samples s*hop .. (e-1)*hop+400, i.e.
    # pre-emphasised samples at the reflected positions below; pre-emphasis needs one more before.
    for s in range(0, n_frames, chunk_frames):
        e = min(s + chunk_frames, n_frames)
        pos = _reflect_index(np.arange(s * HOP - PAD, (e - 1) * HOP + N_FFT - PAD), n)
        lo, hi = int(pos.min()), int(pos.max()) + 1
        a = max(lo - 1, 0)
        z = samples(a, hi) - mean
        pre = z[1:] - PREEMPHASIS * z[:-1]           # pre-emphasised samples a+1 .. hi-1
        if a == 0:                                   # y'[0] = y[0]
            pre, a = torch.cat([z[:1], pre]), -1
        seg = pre[torch.as_tensor(pos - (a + 1), device=device)]
        spec = torch.stft(seg, N_FFT, hop_length=HOP, win_length=N_FFT, window=window,
                          center=False, return_complex=True)  # (201, e - s)
        mel[:, s:e] = fbank @ spec.abs().square()

    db = 10.0 * torch.log10(mel.clamp_min(AMIN))
    db = db - 10.0 * torch.log10(mel.max().clamp_min(AMIN))
    return db.clamp_min(-TOP_DB).to(torch.float32)
