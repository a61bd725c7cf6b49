"""Single-pass decode (pipeline/features/decode.py) against the reference's separate ffmpeg chains."""
from __future__ import annotations

import os
import shutil
import subprocess
import threading
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from pipeline.features.decode import (DecodeError, DecodePlan, decode, decode_all, output_size, plan,
                             reference_commands)

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg")


def make_video(path: Path, seconds: float, size: str = "320x240", rate: int = 30,
               audio: bool = True) -> Path:
    """testsrc2 (every frame differs) + a 440 Hz sine, x264/aac, moov at the front."""
    cmd = ["ffmpeg", "-v", "error", "-nostdin", "-y",
           "-f", "lavfi", "-i", f"testsrc2=size={size}:rate={rate}:duration={seconds}"]
    if audio:
        cmd += ["-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=44100:duration={seconds}",
                "-c:a", "aac", "-ac", "2"]
    cmd += ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
            "-movflags", "+faststart", str(path)]
    subprocess.run(cmd, check=True)
    return path


def run_reference(path: Path) -> dict[str, np.ndarray]:
    """The separate reference chains -> {'2d': (n, H, W, 3), '3d': ..., 'audio': (n,)}."""
    p = plan(path)
    h, w = p.size_2d
    shapes = {"2d": (np.uint8, (h, w, 3)), "3d": (np.uint8, (112, 112, 3)),
              "audio": (np.float32, ())}
    out = {}
    for tag, cmd in reference_commands(path, p).items():
        raw = subprocess.run(cmd, capture_output=True, check=True).stdout
        dtype, shape = shapes[tag]
        out[tag] = np.frombuffer(raw, dtype).reshape(-1, *shape)
    return out


def ffmpeg_children() -> list[int]:
    """Pids of ffmpeg processes whose parent is this test process (from /proc)."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        comm, rest = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:]
        if comm == "ffmpeg" and int(rest.split()[1]) == os.getpid():
            pids.append(int(d.name))
    return pids


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("videos")
    return {"12s": make_video(d / "12s.mp4", 12),
            "12.5s": make_video(d / "12.5s.mp4", 12.5),
            "0.4s": make_video(d / "0.4s.mp4", 0.4),
            "640x360": make_video(d / "640x360.mp4", 6, size="640x360"),
            "noaudio": make_video(d / "noaudio.mp4", 3, audio=False),
            "portrait": make_video(d / "portrait.mp4", 3, size="240x320")}


def test_output_size():
    assert output_size(320, 240, 224) == (224, 298)
    assert output_size(320, 240, 112) == (112, 149)
    assert output_size(640, 360, 224) == (224, 398)
    assert output_size(640, 360, 112) == (112, 199)
    assert output_size(240, 320, 224) == (298, 224)   # portrait: (H, W)
    p = DecodePlan(Path("x"), 640, 360, 0, False, None, 0, None)
    assert p.size_2d == (224, 398) and p.size_3d == (112, 199) and p.crop_xy == (43, 0)


@pytest.mark.parametrize("name, n2d, n3d", [("12s", 12, 288), ("12.5s", 13, 300), ("0.4s", 0, 10)])
def test_frame_counts(videos, name, n2d, n3d):
    f2, f3, audio = decode_all(videos[name])
    assert f2.shape == (n2d, 224, 298, 3) and f2.dtype == np.uint8
    assert f3.shape == (n3d, 112, 112, 3) and f3.dtype == np.uint8
    assert audio.dtype == np.float32 and abs(len(audio) / 16000 - float(name[:-1])) < 0.1


def test_fps1_takes_source_frame_30i_plus_14(videos):
    """features.md: at fps=1 from 30 fps, output i is source frame 30*i + 14."""
    path = videos["12s"]
    f2, _, _ = decode_all(path)
    raw = subprocess.run(
        ["ffmpeg", "-v", "error", "-nostdin", "-i", str(path), "-map", "0:v",
         "-vf", r"select=eq(mod(n\,30)\,14),scale=298:224", "-fps_mode", "passthrough",
         "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:"], capture_output=True, check=True).stdout
    selected = np.frombuffer(raw, np.uint8).reshape(-1, 224, 298, 3)
    assert len(selected) == len(f2) == 12
    assert np.array_equal(f2, selected)
    assert not np.array_equal(f2[1], selected[0])   # testsrc2 frames do differ


@pytest.mark.parametrize("name", ["12.5s", "640x360", "portrait"])
def test_single_pass_byte_identical_to_reference_chains(videos, name):
    f2, f3, audio = decode_all(videos[name], chunk_frames_2d=3, chunk_frames_3d=20)
    ref = run_reference(videos[name])
    assert f2.shape == ref["2d"].shape and f2.tobytes() == ref["2d"].tobytes()
    assert f3.shape == ref["3d"].shape and f3.tobytes() == ref["3d"].tobytes()
    assert audio.shape == ref["audio"].shape
    assert np.max(np.abs(audio - ref["audio"])) <= 1e-6


def test_chunks_are_ordered_and_tagged(videos):
    starts = {"2d": 0, "3d": 0, "audio": 0}
    for c in decode(videos["12s"], chunk_frames_2d=5, chunk_frames_3d=50, audio_chunk_s=1):
        assert c.start == starts[c.stream]
        starts[c.stream] += len(c.data)
    assert starts == {"2d": 12, "3d": 288, "audio": starts["audio"]} and starts["audio"] > 0


def test_portrait(videos):
    p = plan(videos["portrait"])
    assert (p.width, p.height, p.rotation) == (240, 320, 0)
    assert p.size_2d == (298, 224) and p.size_3d == (149, 112) and p.crop_xy == (0, 18)


def test_no_audio_stream(videos):
    p = plan(videos["noaudio"])
    assert not p.has_audio and p.audio_index is None
    assert {c.stream for c in decode(videos["noaudio"])} == {"2d", "3d"}
    f2, f3, audio = decode_all(videos["noaudio"])
    assert len(f2) == 3 and len(f3) == 72 and audio is None


def test_rotated_video_comes_out_portrait(videos, tmp_path):
    # ffmpeg 5.1 writes the display matrix from `rotate` metadata only on a stream copy
    # (when re-encoding it is dropped), and it has no -display_rotation option yet.
    rotated = tmp_path / "rotated.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-y", "-i", str(videos["noaudio"]),
                    "-c", "copy", "-metadata:s:v:0", "rotate=90", str(rotated)], check=True)
    p = plan(rotated)
    assert p.rotation % 180 == 90 and (p.width, p.height) == (240, 320)
    f2, f3, _ = decode_all(rotated)
    assert f2.shape == (3, 298, 224, 3) and f3.shape == (72, 112, 112, 3)
    ref = run_reference(rotated)
    assert f2.tobytes() == ref["2d"].tobytes() and f3.tobytes() == ref["3d"].tobytes()
    # the picture is rotated, not squeezed: it matches a quarter turn of the upright frame
    upright, _, _ = decode_all(videos["noaudio"])
    err = min(np.abs(np.rot90(upright[0], k).astype(int) - f2[0]).mean() for k in (1, 3))
    assert err < 10


def test_truncated_file_never_hangs(videos, tmp_path):
    data = videos["640x360"].read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[:len(data) // 2])
    result = {}

    def work():
        try:
            result["frames"] = decode_all(cut, timeout_s=30)
        except DecodeError as e:
            result["error"] = e

    t = threading.Thread(target=work, daemon=True)
    t.start()
    t.join(timeout=60)
    assert not t.is_alive(), "decode hung on a truncated file"
    if "error" in result:
        assert str(cut) in str(result["error"])
    else:
        f2, f3, _ = result["frames"]
        assert len(f2) < 6 and len(f3) < 144
    assert not ffmpeg_children()


def test_random_bytes_raise_decode_error_naming_the_file(tmp_path):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 200_000, np.uint8).tobytes())
    with pytest.raises(DecodeError, match="junk.mp4"):
        list(decode(junk))
    # past a (forged) plan, ffmpeg itself fails: its exit status and stderr are in the message
    forged = DecodePlan(junk, 320, 240, 0, False, None, 0, None)
    with pytest.raises(DecodeError, match=r"junk\.mp4: ffmpeg exited with status \d+; ffmpeg stderr"):
        list(decode(junk, forged))
    assert not ffmpeg_children()


def test_abandoned_generator_leaves_no_ffmpeg(videos):
    gen = decode(videos["640x360"], chunk_frames_2d=1, chunk_frames_3d=4, queue_chunks=2)
    first = next(gen)
    assert first.stream in {"2d", "3d", "audio"}
    assert ffmpeg_children()            # still running, blocked on the full queue
    gen.close()
    assert not ffmpeg_children()
    assert not [t for t in threading.enumerate() if t.name.startswith("decode-")]


def test_memory_does_not_grow_with_length(tmp_path):
    """Peak Python-allocated memory while streaming 10 s vs 60 s of 640x360 is about the same."""
    def peak(seconds: float) -> tuple[int, int]:
        path = make_video(tmp_path / f"{seconds}.mp4", seconds, size="640x360", rate=10)
        tracemalloc.start()
        total = 0
        try:
            for c in decode(path, chunk_frames_2d=2, chunk_frames_3d=16, audio_chunk_s=1,
                            queue_chunks=4):
                total += c.data.nbytes
            return tracemalloc.get_traced_memory()[1], total
        finally:
            tracemalloc.stop()

    peak10, total10 = peak(10)
    peak60, total60 = peak(60)
    assert total60 > 5 * total10
    assert peak60 < 1.5 * peak10 + 1_000_000, (peak10, peak60)
    assert peak60 < total60 / 10, (peak60, total60)
