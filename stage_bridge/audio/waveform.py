"""A take's waveform as a small PNG picture (numpy -> PNG bytes, no imaging library).

Why server-side and why by hand: the control room shows one picture per take and per context,
and drawing it where the audio is avoids sending whole WAVs to the browser just to look at them;
a min/max envelope per pixel column is all a waveform picture is, and PNG needs only zlib and
CRC-32 (both in the standard library), so no imaging package is added for it.

The picture: one column per `width` slice of the audio (the mono mix), filled from that slice's
minimum to its maximum sample around a centre line, on a transparent background.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

from .io import to_mono

DEFAULT_SIZE = (600, 64)  # width, height in pixels
DEFAULT_COLOUR = (0x3D, 0xD6, 0xA5)  # the page's accent; the rest of the picture is transparent


def envelope(samples: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(min, max) of the mono mix over `width` equal slices (clipped to -1..1); a slice with no
    sample (audio shorter than `width`) takes its nearest sample."""
    mono = to_mono(samples)
    if mono.size == 0:
        zeros = np.zeros(width, np.float32)
        return zeros, zeros
    starts = np.minimum(np.linspace(0, mono.size, width + 1)[:-1].astype(np.int64), mono.size - 1)
    # reduceat: slice i runs from starts[i] to starts[i+1]; where they are equal, it is that one sample
    lo = np.minimum.reduceat(mono, starts)
    hi = np.maximum.reduceat(mono, starts)
    return np.clip(lo, -1.0, 1.0), np.clip(hi, -1.0, 1.0)


def waveform_rgba(samples: np.ndarray, width: int = DEFAULT_SIZE[0], height: int = DEFAULT_SIZE[1],
                  colour: tuple[int, int, int] = DEFAULT_COLOUR) -> np.ndarray:
    """The picture as a (height, width, 4) uint8 array: `colour` where the envelope is."""
    if width < 1 or height < 2:
        raise ValueError(f"a waveform picture needs width >= 1 and height >= 2, not {width}x{height}")
    lo, hi = envelope(samples, width)
    half = (height - 1) / 2.0
    top = np.floor(half - hi * half).astype(np.int64)  # row 0 is the top: +1.0
    bottom = np.ceil(half - lo * half).astype(np.int64)
    rows = np.arange(height)[:, None]
    mask = (rows >= top[None, :]) & (rows <= bottom[None, :])
    image = np.zeros((height, width, 4), np.uint8)
    image[mask] = (*colour, 255)
    return image


def png_bytes(image: np.ndarray) -> bytes:
    """An (height, width, 4) uint8 RGBA array as a PNG file (8-bit RGBA, no interlace, no filter)."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 4:
        raise ValueError("png_bytes takes a (height, width, 4) uint8 array")
    height, width = image.shape[:2]

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = np.concatenate([np.zeros((height, 1), np.uint8), image.reshape(height, width * 4)], axis=1)  # filter 0
    header = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)  # 8 bits, RGBA, deflate, filter 0, no interlace
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows.tobytes(), 6))
            + chunk(b"IEND", b""))


def waveform_png(samples: np.ndarray, width: int = DEFAULT_SIZE[0], height: int = DEFAULT_SIZE[1]) -> bytes:
    """The waveform picture of `samples` ((channels, n) or 1-D) as PNG bytes."""
    return png_bytes(waveform_rgba(samples, width, height))
