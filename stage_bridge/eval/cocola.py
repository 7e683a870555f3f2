"""COCOLA coherence: how well a stem fits the music it is played with.

COCOLA (Ciranni et al., 2024, "COCOLA: Coherence-Oriented Contrastive Learning of Musical Audio
Representations", github.com/gladia-research-group/cocola) was trained contrastively to tell
which two disjoint sub-mixes of 5 s come from the same moment of the same song, so its score
says whether a part is in time and in harmony with a context, which FAD (closeness to real
stems, in isolation) cannot. The STAGE paper reports it; here it is rebuilt from the paper and
the repository's model code so that the official checkpoint loads without its dependencies
(Lightning, efficientnet_pytorch, torchaudio):

- features (`hpss_features`): 16 kHz mono, STFT (1024-point FFT, 400-sample window, 160 hop),
  librosa's harmonic/percussive separation, each half as a 64-band mel spectrogram (60-7800 Hz)
  in dB under its own maximum: a (2, 64, 501) image for 5 s;
- encoder: EfficientNet-B0 (no classifier; 2 input channels) -> 1280 -> linear 512, then
  LayerNorm and tanh;
- similarity: bilinear, ``s(x, y) = e(x)^T W e(y)``. W is a free matrix, so the score is
  asymmetric: ``x`` is the context (the training anchor), ``y`` the stem (the positive).

The EfficientNet-B0 here is a few dozen lines of torch with efficientnet_pytorch's parameter
names and its static "same" padding (computed once for a nominal 224 x 224 image, whatever the
real input size), so the published ``COCOLA_HP_v1`` Lightning checkpoint maps onto it key for
key. A clip longer than 5 s is scored in ``ceil(length / 5 s)`` windows spread evenly from its
start to its end (the last ones overlap, so every second is heard) and the window scores are
averaged; a shorter clip is padded with silence to 5 s.

Weights are only read from disk: ``--cocola PATH`` or ``<weights dir>/eval/cocola/``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from stage_bridge.audio import resample
from stage_bridge.engine.checkpoints import load_state_file
from stage_bridge.errors import CheckpointError, WeightsMissing
from stage_bridge.eval.embedders import weights_location

NAME = "cocola"
SAMPLE_RATE = 16000
WINDOW = 5 * SAMPLE_RATE  # the chunk COCOLA was trained on
N_FFT, WIN_LENGTH, HOP, N_MELS, F_MIN, F_MAX = 1024, 400, 160, 64, 60.0, 7800.0
EMBEDDING_DIM = 512
CHECKPOINT_SUFFIXES = (".ckpt", ".pt", ".pth", ".safetensors")
CHECKPOINT_URL = "https://github.com/gladia-research-group/cocola#pretrained-models"


# -- features ------------------------------------------------------------------------------------

def hpss_features(audio: np.ndarray) -> np.ndarray:
    """16 kHz mono audio -> (2, 64, frames) float32: harmonic and percussive mel dB (COCOLA's input)."""
    import librosa

    stft = librosa.stft(np.asarray(audio, dtype=np.float32), n_fft=N_FFT, win_length=WIN_LENGTH, hop_length=HOP)
    parts = librosa.decompose.hpss(stft)

    def mel_db(spec: np.ndarray) -> np.ndarray:
        mel = librosa.feature.melspectrogram(S=np.abs(spec) ** 2, sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=N_MELS,
                                             fmin=F_MIN, fmax=F_MAX)
        return librosa.power_to_db(mel, ref=np.max)

    return np.stack([mel_db(p) for p in parts]).astype(np.float32)


def windows(audio: np.ndarray) -> np.ndarray:
    """(n,) audio at 16 kHz -> (k, `WINDOW`): ceil(n / WINDOW) windows covering it, evenly spread."""
    y = np.asarray(audio, dtype=np.float32)
    if y.size <= WINDOW:
        return np.pad(y, (0, WINDOW - y.size))[None]
    count = math.ceil(y.size / WINDOW)
    starts = np.round(np.linspace(0, y.size - WINDOW, count)).astype(int)
    return np.stack([y[s:s + WINDOW] for s in starts])


# -- EfficientNet-B0 with efficientnet_pytorch's names -------------------------------------------

# (repeats, kernel, stride, expansion, in, out) per stage; squeeze-excitation ratio 0.25 everywhere
B0_STAGES = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
             (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320))
NOMINAL_SIZE = 224  # the image size efficientnet_pytorch's static padding is computed for
BN_EPS = 1e-3


class SameConv(nn.Conv2d):
    """TensorFlow-style "same" convolution with the padding fixed for a nominal input ``size``
    (efficientnet_pytorch's Conv2dStaticSamePadding): the checkpoint was trained with exactly
    this padding, also on inputs of other sizes."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, size: int = 1, groups: int = 1,
                 bias: bool = False) -> None:
        super().__init__(cin, cout, kernel, stride, groups=groups, bias=bias)
        total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
        self.pad = (total // 2, total - total // 2) * 2  # (left, right, top, bottom)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(F.pad(x, self.pad))


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS)


class MBConv(nn.Module):
    """Inverted residual block: 1x1 expansion, depthwise conv, squeeze-excitation, 1x1 projection."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int, size: int) -> None:
        super().__init__()
        mid = cin * expand
        self.expands = expand != 1
        if self.expands:
            self._expand_conv, self._bn0 = SameConv(cin, mid, 1), _bn(mid)
        self._depthwise_conv = SameConv(mid, mid, kernel, stride, size, groups=mid)
        self._bn1 = _bn(mid)
        squeezed = max(1, int(cin * 0.25))
        self._se_reduce = SameConv(mid, squeezed, 1, bias=True)
        self._se_expand = SameConv(squeezed, mid, 1, bias=True)
        self._project_conv, self._bn2 = SameConv(mid, cout, 1), _bn(cout)
        self.residual = stride == 1 and cin == cout

    def forward(self, inputs: Tensor) -> Tensor:
        x = F.silu(self._bn0(self._expand_conv(inputs))) if self.expands else inputs
        x = F.silu(self._bn1(self._depthwise_conv(x)))
        gate = self._se_expand(F.silu(self._se_reduce(F.adaptive_avg_pool2d(x, 1))))
        x = self._bn2(self._project_conv(torch.sigmoid(gate) * x))
        return x + inputs if self.residual else x


class EfficientNetB0(nn.Module):
    """EfficientNet-B0 without its classifier: (B, C, H, W) -> (B, 1280, 1, 1)."""

    def __init__(self, in_channels: int = 2) -> None:
        super().__init__()
        size = NOMINAL_SIZE
        self._conv_stem, self._bn0 = SameConv(in_channels, 32, 3, 2, size), _bn(32)
        size = math.ceil(size / 2)
        blocks = []
        for repeats, kernel, stride, expand, cin, cout in B0_STAGES:
            for i in range(repeats):
                blocks.append(MBConv(cin if i == 0 else cout, cout, kernel, stride if i == 0 else 1, expand, size))
                if i == 0:
                    size = math.ceil(size / stride)
        self._blocks = nn.ModuleList(blocks)
        self._conv_head, self._bn1 = SameConv(320, 1280, 1), _bn(1280)

    def forward(self, x: Tensor) -> Tensor:
        x = F.silu(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return F.adaptive_avg_pool2d(F.silu(self._bn1(self._conv_head(x))), 1)


# -- COCOLA, named as the Lightning module's state dict --------------------------------------------

class _Backbone(nn.Module):
    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.model = nn.Sequential(EfficientNetB0(in_channels), nn.Dropout(0.1), nn.Flatten())


class _Encoder(nn.Module):
    def __init__(self, in_channels: int, dim: int) -> None:
        super().__init__()
        self.encoder = _Backbone(in_channels)
        self.projection = nn.Linear(1280, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.projection(self.encoder.model(x))


class _Bilinear(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(dim, dim))


class CocolaNet(nn.Module):
    """COCOLA's network; its state dict keys are the official checkpoint's ``state_dict`` keys."""

    def __init__(self, in_channels: int = 2, dim: int = EMBEDDING_DIM) -> None:
        super().__init__()
        self.encoder = _Encoder(in_channels, dim)
        self.layer_norm = nn.LayerNorm(dim)
        self.similarity = _Bilinear(dim)

    def embed(self, features: Tensor) -> Tensor:
        """(B, 2, 64, frames) features -> (B, dim) embeddings, as the score compares them."""
        return torch.tanh(self.layer_norm(self.encoder(features)))

    def pairwise(self, x: Tensor, y: Tensor) -> Tensor:
        """``x[i]^T W y[i]`` for each row: the bilinear similarity of paired embeddings."""
        return ((x @ self.similarity.w) * y).sum(dim=-1)


def load_state(path: Path) -> dict[str, Tensor]:
    """The network's weights from ``path`` (the official Lightning ``.ckpt`` or a bare state dict),
    every key accounted for and every shape checked against `CocolaNet`."""
    try:
        state = load_state_file(path)
    except CheckpointError as exc:
        raise CheckpointError(f"{exc} Put COCOLA's checkpoint (COCOLA_HP_v1, {CHECKPOINT_URL}) there.") from None
    expected = CocolaNet().state_dict()
    stem = state.get("encoder.encoder.model.0._conv_stem.weight")
    if stem is not None and stem.ndim == 4 and stem.shape[1] == 1:
        raise CheckpointError(f"{path} is a single-channel (mel spectrogram) COCOLA; only the harmonic/percussive "
                              f"model (COCOLA_HP_v1, {CHECKPOINT_URL}) is supported.")
    missing = [k for k in expected if k not in state]
    unexpected = sorted(k for k in state if k not in expected)
    if missing or unexpected:
        what, key, count = ("missing", missing[0], len(missing)) if missing else ("unexpected", unexpected[0],
                                                                                 len(unexpected))
        raise CheckpointError(f"{path} is not a COCOLA checkpoint: {what} key '{key}'"
                              + (f" (and {count - 1} more)" if count > 1 else "")
                              + f"; use the official COCOLA_HP_v1 ({CHECKPOINT_URL}).")
    for key, want in expected.items():
        if tuple(state[key].shape) != tuple(want.shape):
            raise CheckpointError(f"{path} is not a COCOLA checkpoint: '{key}' has shape {tuple(state[key].shape)}, "
                                  f"expected {tuple(want.shape)}; use the official COCOLA_HP_v1 ({CHECKPOINT_URL}).")
    return state


def checkpoint_file(path: Path) -> Path:
    """The checkpoint file ``path`` names: itself, or the one checkpoint in that folder."""
    path = Path(path).expanduser()
    if path.is_file():
        return path
    found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in CHECKPOINT_SUFFIXES) if path.is_dir() else []
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        raise WeightsMissing(f"{path} holds {len(found)} checkpoints ({', '.join(p.name for p in found[:3])}); give "
                             f"the one to use with --cocola FILE.")
    raise WeightsMissing(f"no COCOLA checkpoint at {path}: put COCOLA_HP_v1's .ckpt ({CHECKPOINT_URL}) there, or "
                         f"give --cocola FILE.")


class Cocola:
    """The COCOLA model on a device: clips -> embeddings -> coherence scores."""

    name = NAME

    def __init__(self, path: Path, device: str = "cpu") -> None:
        self.path = checkpoint_file(path)
        self.net = CocolaNet()
        self.net.load_state_dict(load_state(self.path), strict=True)
        self.device = torch.device(device)
        self.net.to(self.device).eval()

    def embed(self, audio: np.ndarray, sample_rate: int) -> Tensor:
        """Mono ``audio`` at ``sample_rate`` -> (windows, dim) embeddings, one per 5 s window."""
        y = resample(np.asarray(audio, np.float32), sample_rate, SAMPLE_RATE)
        feats = torch.from_numpy(np.stack([hpss_features(w) for w in windows(y)])).to(self.device)
        with torch.inference_mode():
            return self.net.embed(feats)

    def coherence(self, context: Tensor, stem: Tensor) -> float:
        """Mean window score of a stem's embeddings against its context's (as `embed` gives them)."""
        n = min(len(context), len(stem))
        with torch.inference_mode():
            return float(self.net.pairwise(context[:n], stem[:n]).mean())

    def score(self, context: np.ndarray, stem: np.ndarray, sample_rate: int) -> float:
        """COCOLA score of ``stem`` with ``context`` (both mono at ``sample_rate``)."""
        return self.coherence(self.embed(context, sample_rate), self.embed(stem, sample_rate))


def find_cocola(path: Path | str | None, weights_dir: Path | None = None) -> tuple[Path | None, str]:
    """(the checkpoint to use, or None; why none). An explicit ``path`` must hold one (else
    `WeightsMissing`); without it COCOLA runs only when the weights dir's ``eval/cocola/`` has one."""
    if path is not None:
        return checkpoint_file(Path(path)), ""
    default = weights_location(NAME, weights_dir)
    try:
        return checkpoint_file(default), ""
    except WeightsMissing:
        if default.is_dir() and any(p.suffix in CHECKPOINT_SUFFIXES for p in default.iterdir()):
            raise  # several checkpoints there: the user meant one of them
        return None, f"no checkpoint in {default} and no --cocola"


__all__ = ["Cocola", "CocolaNet", "EfficientNetB0", "checkpoint_file", "find_cocola", "hpss_features", "load_state",
           "windows", "SAMPLE_RATE", "WINDOW"]
