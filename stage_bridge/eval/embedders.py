"""What FAD and KAD compare: audio -> a (frames, dim) array of embedding vectors.

An embedder is anything with a ``name``, a ``sample_rate`` and ``embed(mono) -> (frames, dim)``;
`load_embedder` builds the ones offered here by name. Weights are only ever read from disk
(nothing is downloaded): a missing checkpoint is `WeightsMissing` naming the file to put where.

- ``tiny``: log-mel band energies at 10 frames/s. No weights and exactly reproducible, for tests
  and quick checks; not a perceptual embedding, so its FAD is no quality claim.
- ``vggish``: VGGish (Hershey et al., 2017), the original FAD embedder: 128-d per 0.96 s, the
  last layer taken before its ReLU and without PCA (frechet-audio-distance's default). Weights:
  torchvggish's ``vggish-10086976.pth``.
- ``clap``: LAION-CLAP's audio tower via transformers (``ClapModel``): one 512-d vector per clip.
  Weights: a transformers folder such as ``laion/clap-htsat-unfused`` or ``laion/larger_clap_music``.
- ``mert``: MERT (Li et al., 2024) via transformers: the last layer's frames (75/s). Weights: a
  ``m-a-p/MERT-v1-95M`` folder; MERT ships its own model code, which runs from that folder.

By default each embedder's weights are looked for in ``<weights dir>/eval/<name>/`` (the weights
dir `stage-bridge weights` shows); ``--embedder-weights NAME=PATH`` points elsewhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from stage_bridge.audio import resample
from stage_bridge.engine.checkpoints import default_weights_dir
from stage_bridge.errors import BadArgument, WeightsMissing

EMBEDDERS = ("tiny", "vggish", "clap", "mert")
VGGISH_FILE = "vggish-10086976.pth"  # torchvggish's release name for the converted weights


class Embedder(Protocol):
    name: str  # as the report shows it
    sample_rate: int

    def embed(self, audio: np.ndarray) -> np.ndarray:
        """Mono float32 audio at ``sample_rate`` -> (frames, dim) float64 embeddings."""
        ...


def embed_clip(embedder: Embedder, audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Embeddings of mono ``audio`` given at ``sample_rate`` (resampled to the embedder's rate)."""
    return np.asarray(embedder.embed(resample(np.asarray(audio, np.float32), sample_rate, embedder.sample_rate)),
                      dtype=np.float64)


def weights_location(name: str, weights_dir: Path | None = None) -> Path:
    """Where ``name``'s weights are looked for when no path is given."""
    return (Path(weights_dir) if weights_dir is not None else default_weights_dir()) / "eval" / name


def load_embedder(name: str, weights: Path | None = None, device: str = "cpu",
                  weights_dir: Path | None = None) -> Embedder:
    """The embedder called ``name``, its weights from ``weights`` or `weights_location`."""
    if name not in EMBEDDERS:
        raise BadArgument(f"unknown embedder '{name}'; choose from {', '.join(EMBEDDERS)}.")
    if name == "tiny":
        return TinyEmbedder()
    path = Path(weights).expanduser() if weights is not None else weights_location(name, weights_dir)
    if name == "vggish":
        return VGGishEmbedder(_vggish_file(path), device)
    return TransformersEmbedder(name, _hf_folder(name, path), device)


# -- tiny ------------------------------------------------------------------------------------------

class TinyEmbedder:
    """16 log-mel band energies every 0.1 s at 16 kHz: deterministic, no weights."""

    name = "tiny"
    sample_rate = 16000
    bands = 16
    hop = 1600

    def embed(self, audio: np.ndarray) -> np.ndarray:
        import librosa

        y = np.asarray(audio, dtype=np.float32)
        if y.size < 2048:
            y = np.pad(y, (0, 2048 - y.size))
        mel = librosa.feature.melspectrogram(y=y, sr=self.sample_rate, n_fft=2048, hop_length=self.hop,
                                             n_mels=self.bands, fmin=30.0, fmax=8000.0)
        return np.log10(mel.T.astype(np.float64) + 1e-6)


# -- VGGish ----------------------------------------------------------------------------------------

def _vggish_file(path: Path) -> Path:
    if path.is_dir():
        candidates = [path / VGGISH_FILE] + sorted(path.glob("*.pth")) + sorted(path.glob("*.pt"))
        found = next((c for c in candidates if c.is_file()), None)
        if found is not None:
            return found
    elif path.is_file():
        return path
    raise WeightsMissing(f"VGGish weights are not at {path}. Put torchvggish's {VGGISH_FILE} (from its GitHub "
                         f"release) there, or give --embedder-weights vggish=FILE.")


class _VGGishFrontEnd:
    """VGGish's input: log mel spectrogram examples of 96 frames x 64 bands (vggish_input.py):
    25 ms periodic-Hann frames every 10 ms, |FFT| on 512 bins, HTK mel bands 125-7500 Hz,
    log(mel + 0.01), cut into non-overlapping 0.96 s examples."""

    sample_rate = 16000
    window, hop, fft, bands, example = 400, 160, 512, 64, 96

    def __init__(self) -> None:
        def mel(f):
            return 1127.0 * np.log(1.0 + np.asarray(f) / 700.0)

        bins = self.fft // 2 + 1
        bins_mel = mel(np.linspace(0.0, self.sample_rate / 2.0, bins))
        edges = np.linspace(mel(125.0), mel(7500.0), self.bands + 2)
        matrix = np.empty((bins, self.bands))
        for i in range(self.bands):
            lo, mid, hi = edges[i:i + 3]
            matrix[:, i] = np.maximum(0.0, np.minimum((bins_mel - lo) / (mid - lo), (hi - bins_mel) / (hi - mid)))
        matrix[0, :] = 0.0
        self.mel_matrix = matrix
        n = np.arange(self.window)
        self.hann = 0.5 - 0.5 * np.cos(2.0 * np.pi * n / self.window)  # periodic

    def __call__(self, audio: np.ndarray) -> np.ndarray:
        y = np.asarray(audio, dtype=np.float64)
        need = self.window + (self.example - 1) * self.hop  # at least one whole example
        if y.size < need:
            y = np.pad(y, (0, need - y.size))
        n_frames = 1 + (y.size - self.window) // self.hop
        idx = np.arange(n_frames)[:, None] * self.hop + np.arange(self.window)[None, :]
        spec = np.abs(np.fft.rfft(y[idx] * self.hann, self.fft))
        log_mel = np.log(spec @ self.mel_matrix + 0.01)
        n_ex = n_frames // self.example
        return log_mel[: n_ex * self.example].reshape(n_ex, self.example, self.bands).astype(np.float32)


def vggish_network():
    """VGGish's layers, named as in torchvggish so its state dict loads as is."""
    from torch import nn

    def block(cin, cout):
        return [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True)]

    pool = [nn.MaxPool2d(2, 2)]
    features = nn.Sequential(*block(1, 64), *pool, *block(64, 128), *pool, *block(128, 256), *block(256, 256), *pool,
                             *block(256, 512), *block(512, 512), *pool)
    embeddings = nn.Sequential(nn.Linear(512 * 4 * 6, 4096), nn.ReLU(True), nn.Linear(4096, 4096), nn.ReLU(True),
                               nn.Linear(4096, 128), nn.ReLU(True))
    return nn.ModuleDict({"features": features, "embeddings": embeddings})


class VGGishEmbedder:
    name = "vggish"
    sample_rate = 16000

    def __init__(self, weights: Path, device: str = "cpu") -> None:
        import torch

        self.net = vggish_network()
        try:
            state = torch.load(str(weights), map_location="cpu", weights_only=True)
        except Exception as exc:  # pickle, zip or torch errors: the file is not a state dict
            raise WeightsMissing(f"{weights} is not a readable VGGish state dict ({exc}); put torchvggish's "
                                 f"{VGGISH_FILE} there.") from None
        result = self.net.load_state_dict(state, strict=False)
        if result.missing_keys or result.unexpected_keys:
            bad = (result.missing_keys or result.unexpected_keys)[0]
            raise WeightsMissing(f"{weights} is not torchvggish's {VGGISH_FILE} (key '{bad}' does not match).")
        self.device = torch.device(device)
        self.net.to(self.device).eval()
        self.front = _VGGishFrontEnd()

    def embed(self, audio: np.ndarray) -> np.ndarray:
        import torch

        examples = torch.from_numpy(self.front(audio))[:, None].to(self.device)  # (n, 1, 96, 64)
        with torch.inference_mode():
            x = self.net["features"](examples)
            x = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)  # TF's (h, w, c) order, as torchvggish
            x = self.net["embeddings"][:-1](x)  # before the last ReLU
        return x.double().cpu().numpy()


# -- transformers models (CLAP, MERT) ------------------------------------------------------------

_HF_EXAMPLES = {"clap": "laion/clap-htsat-unfused", "mert": "m-a-p/MERT-v1-95M"}


def _hf_folder(name: str, path: Path) -> Path:
    if path.is_dir() and (path / "config.json").is_file():
        return path
    raise WeightsMissing(f"{name.upper()} weights are not at {path}: put a transformers folder there (config.json, "
                         f"the weights and the preprocessor config, e.g. a local copy of {_HF_EXAMPLES[name]}), or give "
                         f"--embedder-weights {name}=FOLDER.")


class TransformersEmbedder:
    """CLAP (one pooled vector per clip) or MERT (the last hidden layer's frames), from a local folder."""

    def __init__(self, kind: str, folder: Path, device: str = "cpu") -> None:
        import torch
        from transformers import AutoFeatureExtractor, AutoModel, ClapModel

        self.kind = kind
        self.device = torch.device(device)
        try:
            self.features = AutoFeatureExtractor.from_pretrained(str(folder), local_files_only=True,
                                                                 trust_remote_code=kind == "mert")
            if kind == "clap":
                self.model = ClapModel.from_pretrained(str(folder), local_files_only=True)
            else:
                self.model = AutoModel.from_pretrained(str(folder), local_files_only=True, trust_remote_code=True)
        except (OSError, ValueError) as exc:
            raise WeightsMissing(f"cannot load {kind.upper()} from {folder} ({str(exc).splitlines()[0]}); it must be a "
                                 f"complete transformers folder such as a local copy of {_HF_EXAMPLES[kind]}.") from None
        self.model.to(self.device).eval()
        self.sample_rate = int(self.features.sampling_rate)
        self.name = f"{kind} ({folder.name})"

    def embed(self, audio: np.ndarray) -> np.ndarray:
        import torch

        audio = np.asarray(audio, np.float32)
        if self.kind == "clap":  # CLAP hears 10 s; longer clips would be cropped at random: take the first 10 s
            audio = audio[: int(getattr(self.features, "nb_max_samples", audio.size))]
        inputs = self.features(audio, sampling_rate=self.sample_rate, return_tensors="pt")
        inputs = {k: v.to(self.device) for k, v in inputs.items() if isinstance(v, torch.Tensor)}
        with torch.inference_mode():
            if self.kind == "clap":
                out = self.model.get_audio_features(**inputs)
                out = out if isinstance(out, torch.Tensor) else out.pooler_output
                return out.reshape(1, -1).double().cpu().numpy()
            hidden = self.model(**inputs, output_hidden_states=True).hidden_states[-1]
        return hidden[0].double().cpu().numpy()


__all__ = ["EMBEDDERS", "Embedder", "TinyEmbedder", "VGGishEmbedder", "TransformersEmbedder", "embed_clip",
           "load_embedder", "weights_location", "vggish_network"]
