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
