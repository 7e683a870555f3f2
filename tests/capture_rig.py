"""The capture tests' song and JACK song player: what a DAW does in capture mode, with known beats.

- `render_song`: a FluidSynth-rendered song at 120 bpm in 4/4 (kick on 1 and 3, snare on 2 and 4,
  hats on eighths, a piano line of random pitches on sixteenths, so no two stretches sound the
  same and a cross-correlation finds where a piece of it came from to the sample).
- `SongPlayer`: a JACK client (JACK-Client) that plays song frame F while the JACK transport is
  at frame F (looping the song; silence when stopped), into two audio outputs, and sends MIDI notes from a MIDI
  output on request (the capture triggers), and records its two audio inputs by transport frame
  (what jam playback played). jack_midi_clock follows the same transport, so the
  song's bar b starts at transport frame b * BAR_FRAMES, where the clock says bar b starts.
  `player_process` runs it in a process of its own, as a DAW is: two Python JACK callbacks in
  one interpreter wait for each other's GIL and make the server xrun.
- `locate_in_song`: where in the song a captured piece starts.
"""

from __future__ import annotations

import contextlib
import queue
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np

SR = 48000
BPM = 120.0
BAR_FRAMES = int(SR * 60 / BPM * 4)   # 96000
SOUNDFONTS = ("/usr/share/sounds/sf2/FluidR3_GM.sf2", "/usr/share/soundfonts/FluidR3_GM.sf2",
              "/usr/share/sounds/sf2/default-GM.sf2")


def render_song(path: Path, seconds: float = 90.0, seed: int = 0) -> np.ndarray:
    """Render the song to `path` (a float WAV of exactly `seconds`) and return it as (frames, 2) float32."""
    import mido
    import soundfile as sf

    fluidsynth = shutil.which("fluidsynth")
    soundfont = next((p for p in SOUNDFONTS if Path(p).is_file()), None)
    if fluidsynth is None or soundfont is None:
        raise RuntimeError("the capture tests need fluidsynth and fluid-soundfont-gm")
    rng = np.random.default_rng(seed)
    tpq = 480
    events = []                                     # (tick, message)
    sixteenths = int(seconds * BPM / 60 * 4)
    for k in range(sixteenths):
        tick = k * tpq // 4
        if k % 8 == 0:
            events.append((tick, mido.Message("note_on", channel=9, note=36, velocity=120)))
        if k % 8 == 4:
            events.append((tick, mido.Message("note_on", channel=9, note=38, velocity=110)))
        if k % 2 == 0:
            events.append((tick, mido.Message("note_on", channel=9, note=42, velocity=70)))
        note = int(rng.integers(48, 84))
        events.append((tick, mido.Message("note_on", channel=0, note=note, velocity=int(rng.integers(60, 110)))))
        events.append((tick + tpq // 4 - 10, mido.Message("note_off", channel=0, note=note)))
    mid = mido.MidiFile(ticks_per_beat=tpq)
    track = mido.MidiTrack()
    mid.tracks.append(track)
    track.append(mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(BPM)))
    now = 0
    for tick, msg in sorted(events, key=lambda e: e[0]):
        track.append(msg.copy(time=tick - now))
        now = tick
    with tempfile.TemporaryDirectory() as tmp:
        midi_path = Path(tmp) / "song.mid"
        mid.save(str(midi_path))
        subprocess.run([fluidsynth, "-ni", "-q", "-R", "0", "-C", "0", "-g", "0.6", "-r", str(SR), "-F", str(path),
                        soundfont, str(midi_path)], check=True, capture_output=True, timeout=300)
    audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
    assert rate == SR
    audio = np.ascontiguousarray(audio[: int(seconds * SR), :2])
    # exactly `seconds` (FluidSynth stops with the last note): so the loop keeps the bar lines in place
    audio = np.pad(audio, ((0, int(seconds * SR) - len(audio)), (0, 0)))
    sf.write(str(path), audio, SR, subtype="FLOAT")
    return audio


def locate_in_song(piece: np.ndarray, song: np.ndarray, expected: int, search: int = 4000) -> int:
    """Offset of `piece` ((channels, n) or (n,)) in `song` relative to `expected`, by the peak of
    the cross-correlation of their mono mixes within `search` samples either side."""
    from scipy.signal import correlate

    p = np.asarray(piece, np.float64)
    p = p.mean(axis=0) if p.ndim == 2 else p
    p = p[: min(len(p), SR)]
    s = np.tile(song.mean(axis=1).astype(np.float64), 2)         # the player loops the song
    expected_in_song = expected % len(song)
    lo = max(expected_in_song - search, 0)
    segment = s[lo: expected_in_song + search + len(p)]
    c = correlate(segment, p, mode="valid", method="fft")
    return int(np.argmax(c)) + lo - expected_in_song


class SongPlayer:
    """A JACK client playing `song` at the transport's frame; `note(n)` sends a MIDI note-on."""

    def __init__(self, server: str, song: np.ndarray, name: str = "stage-test-song"):
        import jack

        self._jack = jack
        self.song = song
        self.client = jack.Client(name, servername=server, no_start_server=True)
        self.outs = [self.client.outports.register(f"out_{i + 1}") for i in range(2)]
        self.ins = [self.client.inports.register(f"in_{i + 1}") for i in range(2)]
        self.recording = np.zeros((len(song), 2), np.float32)   # what reached `ins`, by transport frame
        self.midi_out = self.client.midi_outports.register("midi_out")
        self._notes: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._off: list[int] = []
        self.client.set_process_callback(self._process)
        self.client.activate()

    def _process(self, frames: int) -> None:
        state, pos = self.client.transport_query_struct()
        f = int(pos.frame)
        playing = state == self._jack.ROLLING
        idx = (f + np.arange(frames)) % len(self.song)          # the song loops (tests run for minutes)
        for ch, port in enumerate(self.outs):
            buf = np.frombuffer(port.get_buffer(), np.float32)
            buf[:] = self.song[idx, ch] if playing else 0.0
        if playing:
            for ch, port in enumerate(self.ins):
                self.recording[idx, ch] = np.frombuffer(port.get_buffer(), np.float32)
        self.midi_out.clear_buffer()
        for note in self._off:
            self.midi_out.write_midi_event(0, (0x80, note, 0))
        self._off = []
        while True:
            try:
                note = self._notes.get_nowait()
            except queue.Empty:
                break
            self.midi_out.write_midi_event(1, (0x90, note, 100))
            self._off.append(note)

    def note(self, number: int) -> None:
        self._notes.put(number)

    def close(self) -> None:
        self.client.deactivate()
        self.client.close()

    def __enter__(self) -> "SongPlayer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class PlayerProcess:
    """`SongPlayer` in a subprocess; `note(n)` sends it a trigger note; ports named `NAME:out_1`..."""

    def __init__(self, proc: subprocess.Popen, name: str):
        self.proc, self.name = proc, name
        self.outs = [f"{name}:out_1", f"{name}:out_2"]
        self.ins = [f"{name}:in_1", f"{name}:in_2"]
        self.midi_out = f"{name}:midi_out"

    def note(self, number: int) -> None:
        self.proc.stdin.write(f"note {number}\n")
        self.proc.stdin.flush()

    def recording(self, path: Path) -> np.ndarray:
        """What reached the player's inputs so far, by transport frame ((frames, 2), the song's length)."""
        import soundfile as sf

        self.proc.stdin.write(f"dump {path}\n")
        self.proc.stdin.flush()
        if self.proc.stdout.readline().strip() != "dumped":
            raise RuntimeError("the song player did not write its recording")
        return sf.read(str(path), dtype="float32", always_2d=True)[0]


@contextlib.contextmanager
def player_process(server: str, song_path: Path, env: dict, name: str = "stage-test-song") -> Iterator[PlayerProcess]:
    proc = subprocess.Popen([sys.executable, __file__, server, str(song_path), name], env=env, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        line = proc.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"the song player did not start: {line}{proc.stdout.read()[-2000:]}")
        yield PlayerProcess(proc, name)
    finally:
        with contextlib.suppress(BrokenPipeError, OSError):
            proc.stdin.close()              # the player ends when its stdin does
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    import soundfile as sf

    audio, _ = sf.read(sys.argv[2], dtype="float32", always_2d=True)
    with SongPlayer(sys.argv[1], np.ascontiguousarray(audio[:, :2]), sys.argv[3]) as player:
        print("ready", flush=True)
        for command in sys.stdin:
            if command.startswith("note "):
                player.note(int(command.split()[1]))
            elif command.startswith("dump "):
                sf.write(command.split(" ", 1)[1].strip(), player.recording, SR, subtype="FLOAT")
                print("dumped", flush=True)
