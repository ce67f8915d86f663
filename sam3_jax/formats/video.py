"""Frames of a video file, decoded on demand (needs PyAV: `pip install "sam3_jax[video]"`).

`VideoFileFrames(path)[i]` is frame i (presentation order) as an HxWx3 uint8 RGB array. Opening the
file reads its packets' timestamps (no decoding) to count and index the frames. A frame is decoded
when asked for: reading on from the last frame decodes onwards; any other frame seeks to the
keyframe before it and decodes up to it. The latest `cache_frames` decoded frames are kept, so
memory stays bounded whatever the video's length and backward reading decodes each group of
pictures once per `cache_frames` frames rather than once per frame.
"""

from __future__ import annotations

import collections
import os
from typing import Optional

import numpy as np


def _import_av():
    try:
        import av
    except ImportError:
        raise ImportError('reading a video file needs PyAV: pip install "sam3_jax[video]" (or pip install av), '
                          "or give a folder of frame images instead") from None
    return av


class VideoFileFrames:
    def __init__(self, path: str, cache_frames: int = 32):
        av = _import_av()
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no such video file: {path}")
        self.path = path
        try:
            self._container = av.open(path)
        except av.FFmpegError as e:
            raise ValueError(f"{path} is not a video file PyAV can read: {e}") from None
        if not self._container.streams.video:
            self._container.close()
            raise ValueError(f"{path} holds no video stream")
        self._stream = self._container.streams.video[0]
        pts = [p.pts for p in self._container.demux(self._stream) if p.size > 0]
        if not pts:
            self._container.close()
            raise ValueError(f"{path} holds no video frames")
        if any(p is None for p in pts):
            self._container.close()
            raise ValueError(f"{path}: frames without timestamps cannot be indexed; extract them into a folder of "
                             "images (e.g. ffmpeg -i VIDEO frames/%05d.jpg) and give the folder")
        self._pts = sorted(pts)
        self._index = {p: i for i, p in enumerate(self._pts)}
        self._cache: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()
        self.cache_frames = max(1, int(cache_frames))
        self._decoder = None  # an open decode iterator and the index of the frame it gives next
        self._next: Optional[int] = None
        self.hw = self[0].shape[:2]

    def __len__(self) -> int:
        return len(self._pts)

    def __getitem__(self, i: int) -> np.ndarray:
        if not 0 <= i < len(self._pts):
            raise IndexError(f"frame {i} is out of range for a video of {len(self._pts)} frames")
        frame = self._cache.get(i)
        if frame is not None:
            self._cache.move_to_end(i)
            return frame
        if self._decoder is None or self._next is None or not self._next <= i <= self._next + 64:
            self._container.seek(self._pts[i], stream=self._stream, backward=True, any_frame=False)
            self._decoder = self._container.decode(self._stream)
            self._next = None
        for decoded in self._decoder:
            k = self._index.get(decoded.pts)
            if k is None:
                continue
            self._next = k + 1
            if k > i:  # the seek overshot (a keyframe index off by some frames): start before it
                break
            img = decoded.to_ndarray(format="rgb24")
            self._keep(k, img)
            if k == i:
                return img
        # the stream ended or overshot: decode the whole way from the first frame (slow, rare)
        self._container.seek(self._pts[0], stream=self._stream, backward=True, any_frame=True)
        self._decoder = self._container.decode(self._stream)
        for decoded in self._decoder:
            k = self._index.get(decoded.pts)
            if k is not None and k >= i - self.cache_frames + 1:
                img = decoded.to_ndarray(format="rgb24")
                self._keep(k, img)
                if k == i:
                    self._next = k + 1
                    return img
        self._decoder, self._next = None, None
        raise ValueError(f"{self.path}: frame {i} could not be decoded")

    def _keep(self, k: int, img: np.ndarray) -> None:
        self._cache[k] = img
        self._cache.move_to_end(k)
        while len(self._cache) > self.cache_frames:
            self._cache.popitem(last=False)

    def close(self) -> None:
        self._container.close()
