"""Log-Mel recipe (pipeline/features/logmel.py) against the golden values of features.md."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.features.logmel import frames_for, logmel


def golden_wave() -> np.ndarray:
    """features.md "Golden check": computed in float64, cast to float32, a 4000-sample gap."""
    n_total = 40000
    n = np.arange(n_total, dtype=np.float64)
    x = (0.5 * np.sin(2 * np.pi * 440 * n / 16000)
         + 0.2 * np.sin(2 * np.pi * 2500 * n / 16000) * (n / n_total)
         + 0.01 * np.sin(0.0007 * n ** 2))
    x[30000:34000] = 0
    return x.astype(np.float32)


def test_golden_values():
    s = logmel(golden_wave()).numpy()
    assert s.shape == (40, 251) and s.dtype == np.float32
    assert s.max() == 0.0 and s.min() == -80.0
    tol = 1e-3
    assert abs(s.mean() - -50.56309) < tol and abs(s.std() - 20.30514) < tol
    for (i, j), v in {(0, 0): -31.53088, (20, 0): -37.84358, (20, 1): -52.97623,
                      (10, 100): -59.50885, (5, 200): -80.0, (39, 250): -37.45140}.items():
        assert abs(s[i, j] - v) < tol, (i, j, s[i, j], v)
    assert abs((s == -80.0).mean() * 100 - 10.26) < 0.01
    np.testing.assert_allclose(s[:, :5].mean(0), [-33.8847, -46.3368, -57.0925, -58.4868,
                                                  -62.2757], atol=tol)
    np.testing.assert_allclose(s[:6].mean(1), [-62.6291, -62.2713, -61.5663, -60.0071,
                                               -12.1037, -8.8624], atol=tol)


def test_frame_count():
    assert frames_for(160000) == 1001                 # 10 s -> 1001
    assert logmel(np.zeros(160000, np.float32) + 0.1).shape == (40, 1001)


def test_chunked_memmap_and_tensor_inputs_agree(tmp_path):
    """Chunk boundaries (and the reflect padding at both ends) change nothing; a spooled file
    read through np.memmap gives the same numbers as the array in memory."""
    wave = np.random.default_rng(0).standard_normal(16000 * 7 + 123).astype(np.float32)
    ref = logmel(wave)
    path = tmp_path / "a.f32"
    wave.tofile(path)
    mm = np.memmap(path, np.float32, mode="r")
    for chunk in (1, 7, 100):
        got = logmel(mm, chunk_frames=chunk)
        assert torch.allclose(got, ref, atol=1e-4), chunk
    assert torch.allclose(logmel(torch.from_numpy(wave)), ref, atol=1e-4)


@pytest.mark.parametrize("n", [0, 1, 2, 150, 201, 401])
def test_short_inputs(n):
    """Shorter than the 200-sample reflect pad: numpy's repeated reflection, no error."""
    wave = np.random.default_rng(n).standard_normal(n).astype(np.float32)
    s = logmel(wave)
    assert s.shape == (40, frames_for(n or 200))
    assert torch.isfinite(s).all() and s.max() <= 0 and s.min() >= -80


def test_silent_is_all_zero_db_and_int_input():
    assert torch.equal(logmel(np.zeros(3200, np.float32)), torch.zeros(40, 21))
    a = logmel((golden_wave() * 20000).astype(np.int16))   # int input: scale is irrelevant
    ref = logmel(golden_wave())
    loud = ref > -30                                        # above int16 quantisation noise
    assert torch.allclose(a[loud], ref[loud], atol=0.05)


def test_rejects_wrong_rate_and_stereo():
    with pytest.raises(ValueError, match="16000 Hz"):
        logmel(np.zeros(100, np.float32), 44100)
    with pytest.raises(ValueError, match="mono"):
        logmel(np.zeros((2, 100), np.float32))


# --------------------------------------------------------------------------- precision
# Two numpy versions of the recipe, written from features.md without torch: the reference's
# own dtype flow (librosa 0.6 as DAVEnet/AVLnet call it: float32 waveform, pre-emphasis and
# power; the window is float64, so frames x window and numpy's FFT run in float64 before the
# spectrum is stored as complex64; a float32 Mel basis and dB) and the same recipe all in
# float64, which stands for the exact values.


def _np_mel_basis(dtype) -> np.ndarray:
    def hz_to_mel(f):
        f = np.asarray(f, np.float64)
        return np.where(f >= 1000, 15 + np.log(np.maximum(f, 1e-9) / 1000) * 27 / np.log(6.4),
                        3 * f / 200)

    def mel_to_hz(m):
        return np.where(m >= 15, 1000 * np.exp(np.log(6.4) / 27 * (m - 15)), 200 * m / 3)

    fft_freqs = np.fft.rfftfreq(400, 1 / 16000)
    mel_f = mel_to_hz(np.linspace(hz_to_mel(20.0), hz_to_mel(8000.0), 42))
    ramps = mel_f[:, None] - fft_freqs[None, :]
    fdiff = np.diff(mel_f)
    weights = np.zeros((40, 201))
    for i in range(40):
        lower = -ramps[i] / fdiff[i]
        upper = ramps[i + 2] / fdiff[i + 1]
        weights[i] = np.maximum(0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_f[2:42] - mel_f[:40]))[:, None]
    return weights.astype(dtype)


def _np_logmel(x: np.ndarray, exact: bool) -> np.ndarray:
    """exact: everything in float64; else the reference's dtype flow."""
    real = np.float64 if exact else np.float32
    y = x.astype(real)
    y = y - y.mean()
    y = np.append(y[0], y[1:] - real(0.97) * y[:-1]).astype(real)
    padded = np.pad(y, 200, mode="reflect")
    n_frames = 1 + len(y) // 160
    idx = np.arange(400)[None, :] + 160 * np.arange(n_frames)[:, None]
    window = 0.54 - 0.46 * np.cos(2 * np.pi * np.arange(400) / 399)          # float64
    spec = np.fft.rfft(padded[idx] * window, axis=1).T                         # float64 FFT
    if not exact:
        spec = spec.astype(np.complex64)
    power = np.abs(spec) ** 2
    mel = _np_mel_basis(real) @ power
    db = 10 * np.log10(np.maximum(mel, real(1e-10)))
    db = db - 10 * np.log10(max(mel.max(), real(1e-10)))
    return np.maximum(db, -80).astype(np.float32)


def _tone(freq: float, seconds: float = 2.0) -> np.ndarray:
    n = np.arange(int(16000 * seconds), dtype=np.float64)
    return (0.5 * np.sin(2 * np.pi * freq * n / 16000)).astype(np.float32)


# bin centres (40 Hz apart) and the half-bin frequencies between them, across the Mel range
_SWEEP = [k * 40.0 for k in (1, 3, 7, 12, 25, 50, 99, 150, 199)] + \
         [k * 40.0 + 20 for k in (0, 2, 6, 11, 24, 49, 98, 149, 198)]


def test_golden_wave_within_1e3_db_of_exact_and_reference():
    x = golden_wave()
    ours, exact, ref = logmel(x).numpy(), _np_logmel(x, True), _np_logmel(x, False)
    assert np.abs(ours - exact).max() < 1e-4
    assert np.abs(ours - ref).max() < 1e-3


@pytest.mark.parametrize("freq", _SWEEP)
def test_pure_tones_within_the_references_own_float32_error(freq):
    """A pure tone leaves most Mel bands 60-80 dB below its own, where float32 rounding of
    the STFT shows; ours matches the exact values and is within the reference's own float32
    error of the reference (the float32 STFT this replaced was up to 0.013 dB off)."""
    x = _tone(freq)
    ours, exact, ref = logmel(x).numpy(), _np_logmel(x, True), _np_logmel(x, False)
    own_error = np.abs(ref - exact).max()
    assert own_error < 3e-3                         # the reference vs the exact recipe
    assert np.abs(ours - exact).max() < 1e-4
    assert np.abs(ours - ref).max() <= max(own_error, 1e-4) + 1e-5


def test_mel_basis_matches_torchaudio_slaney():
    import torchaudio

    from pipeline.features.logmel import mel_fbank

    fb = torchaudio.functional.melscale_fbanks(201, 20.0, 8000.0, 40, 16000, norm="slaney",
                                               mel_scale="slaney").T.numpy()
    np.testing.assert_allclose(mel_fbank(), fb, rtol=1e-5, atol=1e-7)  # float32 there
    np.testing.assert_allclose(mel_fbank(), _np_mel_basis(np.float64), rtol=1e-12, atol=1e-15)
