"""Video files as a session's frames (`sam3_jax.formats.video`, PyAV): frame count, random access in
any order equal to a plain sequential decode (B-frames, short groups of pictures), bounded cache,
and clear errors for a missing reader, a file that is not a video, a missing path."""

from __future__ import annotations

import sys

import numpy as np
import pytest

av = pytest.importorskip("av")

NUM = 30


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    """An H.264 file with B-frames and a keyframe every 5 frames, and its frames decoded in order."""
    rng = np.random.default_rng(0)
    path = str(tmp_path_factory.mktemp("video") / "clip.mp4")
    with av.open(path, "w") as c:
        s = c.add_stream("libx264", rate=10)
        s.width, s.height, s.pix_fmt, s.gop_size = 64, 48, "yuv420p", 5
        s.options = {"bf": "2"}
        for k in range(NUM):
            img = np.full((48, 64, 3), 8 * k, np.uint8) + rng.integers(0, 40, (48, 64, 3), dtype=np.uint8)
            for packet in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)
    with av.open(path) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == NUM
    return path, frames


def test_random_access_equals_sequential_decode(video):
    from sam3_jax.formats.video import VideoFileFrames

    path, ref = video
    v = VideoFileFrames(path, cache_frames=4)
    assert len(v) == NUM and v.hw == (48, 64)
    order = [5, 0, 29, 28, 27, 26, 25, 24, 23, 7, 8, 9, 3, 15, 1] + list(range(NUM - 1, -1, -1))
    for i in order:
        np.testing.assert_array_equal(v[i], ref[i], err_msg=f"frame {i}")
    assert len(v._cache) <= 4
    with pytest.raises(IndexError, match="out of range"):
        v[NUM]


def test_session_frames_from_a_video_file(video):
    from sam3_jax.predict.video import _Frames

    path, ref = video
    frames = _Frames(path)
    assert len(frames) == NUM and tuple(frames.hw) == (48, 64)
    np.testing.assert_array_equal(frames[17], ref[17])


def test_errors(video, tmp_path, monkeypatch):
    from sam3_jax.predict.video import _Frames

    text = tmp_path / "notes.txt"
    text.write_text("not a video")
    with pytest.raises(ValueError, match="not a video file"):
        _Frames(str(text))
    with pytest.raises(FileNotFoundError, match="no such folder of frames or video file"):
        _Frames(str(tmp_path / "missing.mp4"))
    monkeypatch.setitem(sys.modules, "av", None)
    with pytest.raises(ImportError, match="needs PyAV"):
        _Frames(video[0])
