#!/usr/bin/env python3
"""Build the STAGE Bridge Max for Live device from its readable sources.

    python max_for_live/build.py            # writes src/STAGE Bridge.maxpat and STAGE Bridge.amxd
    python max_for_live/build.py --check    # fails if the committed files differ from a fresh build
    python max_for_live/build.py --out DIR  # writes both files into DIR instead
    python max_for_live/build.py --unfrozen DIR   # an unfrozen device plus its .js files, for editing in Max

Sources: the patcher is described below in Python (boxes and patch cords by name); the scripts are
`src/stage_device.js` (Max glue), `src/stage_logic.js` (plain logic, tested with Node) and
`src/stage_launcher.js` (the Node for Max script that starts the daemon). The build writes the
patcher as `src/STAGE Bridge.maxpat` (readable JSON, committed) and packs it with the three
scripts into `STAGE Bridge.amxd`. Same sources -> byte-identical files (no clocks, no
randomness).

The .amxd layout (taken from Ableton's own devices in github.com/Ableton/maxdevtools: the
unfrozen `cpu-reporter/CPU Reporter.amxd` and the frozen `maxdiff/tests/test_files/FrozenTest.amxd`
saved by Max 8.6.4 and 9.0.10, and from maxdiff's reader `amxd_textconv.py` / `frozen_device_printer.py`):

    chunks of  4-byte tag | uint32 little-endian size | data:
      'ampf' size 4   device type: 'aaaa' audio effect ('mmmm' MIDI effect, 'iiii' instrument)
      'meta' size 4   uint32 LE: 7 in frozen devices (0 or 1 in unfrozen ones)
      'ptch' size N   frozen: an 'mx@c' collective; unfrozen: the patcher JSON + one NUL byte
    the 'mx@c' collective (all integers big-endian):
      'mx@c' | uint32 16 (header size) | uint64 offset of the directory
      file data, back to back: first the device's patcher JSON + NUL, then each dependency as is
      'dlst' | uint32 size (whole directory) | 'dire' entries:
        'dire' | uint32 size | fields, each 'tag' | uint32 size (incl. 8-byte header) | data:
          type (4 chars: JSON, TEXT...) | fnam (name, NUL, padded to 4) | sz32 | of32 (offset from
          'mx@c') | vers (0) | flag (0x11 for the device itself, 0 for the others) | mdat (HFS+ date)

A frozen device carries its scripts, so the single .amxd works when dropped into Live.
"""

from __future__ import annotations

import argparse
import json
import shutil
import struct
import sys
from pathlib import Path
from typing import Any, Iterable

HERE = Path(__file__).resolve().parent
SRC = HERE / "src"
DEVICE_NAME = "STAGE Bridge"
AMXD_NAME = f"{DEVICE_NAME}.amxd"
MAXPAT_NAME = f"{DEVICE_NAME}.maxpat"
JS_FILES = ("stage_device.js", "stage_logic.js", "stage_launcher.js")
HOST = "127.0.0.1"
SEND_PORT = 9000      # the daemon's --osc-port default
RECEIVE_PORT = 9001   # the daemon's --reply-port default
DEVICE_WIDTH = 700
DEVICE_HEIGHT = 169   # Live's device height
AUDIO_EFFECT = b"aaaa"
FROZEN_META = 7
DEVICE_FLAG = 0x11
# A fixed modification date for the frozen files (HFS+ seconds: since 1904-01-01), so that a
# build does not depend on the clock: 2025-01-01 00:00:00 UTC.
HFS_EPOCH_OFFSET = 2082844800
MDAT = 1735689600 + HFS_EPOCH_OFFSET
# The Max that Live 12 ships: Max 9 (Ableton's own test devices in maxdevtools were saved by 9.0.10).
APPVERSION = {"major": 9, "minor": 0, "revision": 10, "architecture": "x64", "modernui": 1}
# Where Max found each dependency when the device was saved (Max 9 writes it into every dependency_cache
# entry). A build has no Max session: the folder a checkout at ~/stage-bridge keeps the scripts in. Max uses
# it only to show the project; a frozen device loads its frozen copies.
BOOTPATH = "~/stage-bridge/max_for_live/src"
ROUTE_KEYS = ("osc", "rec", "arm", "gate", "delaytime", "delay", "status", "progress", "results", "tracks", "led",
              "node", "player", "auditionarm", "auditiongate", "state", "showprompt", "showhome", "showcommand")


# -- a small patcher description language ----------------------------------------------------------

class Patcher:
    """Boxes and patch cords by name. Box ids are the names, so patch cords read like sentences."""

    def __init__(self) -> None:
        self.boxes: dict[str, dict[str, Any]] = {}
        self.lines: list[dict[str, Any]] = []
        self.parameters: dict[str, list[Any]] = {}

    def _add(self, name: str, box: dict[str, Any]) -> str:
        if name in self.boxes:
            raise ValueError(f"duplicate box {name}")
        box["id"] = name
        self.boxes[name] = box
        return name

    def obj(self, name: str, text: str, at: tuple[float, float], inlets: int, outlets: int | list[str],
            width: float | None = None, **attrs: Any) -> str:
        """An object box ([newobj] in Max's terms): `outlets` is a count or the outlet types."""
        types = outlets if isinstance(outlets, list) else [""] * outlets
        box = {"maxclass": "newobj", "text": text, "numinlets": inlets, "numoutlets": len(types),
               "patching_rect": [float(at[0]), float(at[1]), float(width or max(40, 7 * len(text) + 12)), 22.0]}
        if types:
            box["outlettype"] = types
        box.update(attrs)
        return self._add(name, box)

    def msg(self, name: str, text: str, at: tuple[float, float]) -> str:
        return self._add(name, {"maxclass": "message", "text": text, "numinlets": 2, "numoutlets": 1,
                                "outlettype": [""],
                                "patching_rect": [float(at[0]), float(at[1]), float(max(30, 7 * len(text) + 12)), 22.0]})

    def ui(self, name: str, maxclass: str, at: tuple[float, float], rect: list[float], inlets: int,
           outlets: list[str], **attrs: Any) -> str:
        """A user-interface box, shown in the device (presentation) at `rect` = [x, y, w, h]."""
        box = {"maxclass": maxclass, "numinlets": inlets, "numoutlets": len(outlets),
               "patching_rect": [float(at[0]), float(at[1]), float(rect[2]), float(rect[3])],
               "presentation": 1, "presentation_rect": [float(v) for v in rect]}
        if outlets:
            box["outlettype"] = outlets
        box.update(attrs)
        return self._add(name, box)

    def param(self, name: str, maxclass: str, at: tuple[float, float], rect: list[float], outlets: list[str],
              longname: str, shortname: str, ptype: int, stored_only: bool = True, **valueof: Any) -> str:
        """A Live parameter (live.tab, live.menu, live.numbox, live.text): saved with the Live set."""
        values = {"parameter_longname": longname, "parameter_shortname": shortname, "parameter_type": ptype,
                  "parameter_invisible": 1 if stored_only else 2}
        values.update(valueof)
        self.parameters[name] = [longname, shortname, 0]
        return self.ui(name, maxclass, at, rect, 1, outlets, parameter_enable=1, varname=longname,
                       saved_attribute_attributes={"valueof": values})

    def pattr(self, name: str, varname: str, at: tuple[float, float], longname: str, shortname: str) -> str:
        """A [pattr] saved with the Live set as a blob parameter (type 3), as public devices save one:
        `pattr @parameter_enable 1` with parameter_invisible 1 and parameter_type 3."""
        self.parameters[name] = [longname, shortname, 0]
        return self.obj(name, f"pattr {varname} @parameter_enable 1", at, 1, ["", "", ""], width=200,
                        varname=varname, saved_object_attributes={"parameter_enable": 1, "parameter_mappable": 0},
                        saved_attribute_attributes={"valueof": {"parameter_invisible": 1, "parameter_longname": longname,
                                                                "parameter_shortname": shortname, "parameter_type": 3}})

    def label(self, name: str, text: str, at: tuple[float, float], rect: list[float]) -> str:
        return self.ui(name, "live.comment", at, rect, 1, [], text=text, textjustification=0)

    def connect(self, source: str, outlet: int, destination: str, inlet: int = 0) -> None:
        for box, port, key in ((source, outlet, "numoutlets"), (destination, inlet, "numinlets")):
            if box not in self.boxes:
                raise ValueError(f"no box {box}")
            if not 0 <= port < self.boxes[box][key]:
                raise ValueError(f"{box} has no {key[3:-1]} {port}")
        self.lines.append({"patchline": {"destination": [destination, inlet], "source": [source, outlet]}})

    def chain(self, *names: str) -> None:
        """outlet 0 -> inlet 0 along the names."""
        for a, b in zip(names, names[1:]):
            self.connect(a, 0, b, 0)

    def text_setting(self, key: str, textedit: str, at: tuple[float, float], width: float) -> None:
        """textedit -> [route text] -> [prepend KEY] -> script. Both outlets of the route feed the
        prepend: typed text arrives as `text ...`, a symbol set from elsewhere as a plain list."""
        self.obj(f"{key}_text", "route text", at, 2, 2, width=70)
        self.obj(f"prepend_{key}", f"prepend {key}", (at[0], at[1] + 30), 1, 1, width=width)
        self.connect(textedit, 0, f"{key}_text", 0)
        self.connect(f"{key}_text", 0, f"prepend_{key}", 0)
        self.connect(f"{key}_text", 1, f"prepend_{key}", 0)
        self.connect(f"prepend_{key}", 0, "script", 0)


def device_patcher() -> dict[str, Any]:
    """The STAGE Bridge device: audio passes through; the UI, the Live observers, the recorder and
    the OSC link all talk to [js stage_device.js], which does what stage_logic.js decides."""
    p = Patcher()
    W = DEVICE_WIDTH

    # -- audio: in -> out unchanged, and into the recorder ---------------------------------------------
    p.obj("plugin", "plugin~", (40, 620), 2, ["signal", "signal"])
    p.obj("plugout", "plugout~", (40, 700), 2, ["signal", "signal"])
    p.obj("recorder", "sfrecord~ 2 @bitdepth 24", (200, 700), 2, ["signal"], width=160)
    for ch in (0, 1):
        p.connect("plugin", ch, "plugout", ch)
        p.connect("plugin", ch, "recorder", ch)

    # -- audition: the chosen take, mixed into the output in time with Live --------------------------
    # [sfplay~ 2] plays a file from disk: `open <file>`, then 1 to start, 0 to stop, `seek <ms>` to start
    # at an offset; its last outlet bangs when the file ends or is halted
    # (https://docs.cycling74.com/max8/refpages/sfplay~). A second [timepoint] + [gate], like the
    # recorder's, starts it when the transport reaches the take's start. [plugout~] sums what reaches an
    # inlet, so the take is heard on top of the track. The level: a live.dial in dB -> [dbtoa]
    # (https://docs.cycling74.com/max8/refpages/dbtoa) -> the right inlet of each [*~].
    p.obj("player", "sfplay~ 2", (40, 780), 2, ["signal", "signal", "bang"], width=70)
    for ch in (0, 1):
        p.obj(f"level_{ch}", "*~ 1.", (40 + 80 * ch, 820), 2, ["signal"], width=40)
        p.connect("player", ch, f"level_{ch}", 0)
        p.connect(f"level_{ch}", 0, "plugout", ch)
    p.obj("dbtoa", "dbtoa", (160, 760), 1, [""], width=50)
    p.connect("dbtoa", 0, "level_0", 1)
    p.connect("dbtoa", 0, "level_1", 1)

    # -- the script and its router ---------------------------------------------------------------------
    p.obj("script", "js stage_device.js", (420, 300), 1, 1, width=130,
          saved_object_attributes={"filename": "stage_device.js", "parameter_enable": 0})
    p.obj("router", "route " + " ".join(ROUTE_KEYS), (420, 360), 2, len(ROUTE_KEYS) + 1, width=900)
    p.connect("script", 0, "router", 0)
    out = {key: i for i, key in enumerate(ROUTE_KEYS)}
    # stage_device.js include()s stage_logic.js; Max finds an included file along its search path, which for
    # a frozen device holds the files frozen into it. A box of its own makes the logic a dependency that
    # Max's freezing and Ableton's maxdiff (get_dependency_filenames: a box's saved filename) both see;
    # loading it alone only defines StageLogic in that box's own JavaScript context, nothing else.
    p.obj("logic", "js stage_logic.js", (600, 300), 1, 1, width=110,
          saved_object_attributes={"filename": "stage_logic.js", "parameter_enable": 0})

    # -- starting the daemon: a Node for Max script (https://docs.cycling74.com/nodeformax/api/) ------
    # @autostart 1 runs the script when the device loads; its messages come out of the left outlet.
    # Box as Max 9 saves a node.script (Ableton's maxdevtools maxdiff/tests/test_files/Test.amxd).
    p.obj("launcher", "node.script stage_launcher.js @autostart 1", (600, 400), 1, ["", ""], width=250,
          saved_object_attributes={"autostart": 1, "defer": 0, "watch": 0},
          textfile={"filename": "stage_launcher.js", "flags": 0, "embed": 0, "autowatch": 1})
    p.obj("prepend_launcher", "prepend launcher", (600, 440), 1, 1, width=110)
    p.connect("router", out["node"], "launcher", 0)
    p.connect("launcher", 0, "prepend_launcher", 0)
    p.connect("prepend_launcher", 0, "script", 0)

    # -- remembered with the Live set: a [pattr] with parameter mode on and the blob type, which Live
    # stores with the set and never automates ("blob: any type of data you can store with a pattr
    # object", https://docs.cycling74.com/max8/vignettes/live_parameters). The script sends `set <state>`
    # (stores without output, https://docs.cycling74.com/max8/refpages/pattr); when the set is opened,
    # the pattr outputs the stored state, and the script shows it again.
    p.pattr("state", "stage_state", (860, 400), "STAGE state", "State")
    p.obj("prepend_saved", "prepend saved", (860, 440), 1, 1, width=90)
    p.connect("router", out["state"], "state", 0)
    p.connect("state", 0, "prepend_saved", 0)
    p.connect("prepend_saved", 0, "script", 0)

    # -- audition control: the script opens/seeks/stops the player; the timepoint starts it -------------
    p.obj("audition_timepoint", "timepoint", (200, 860), 1, ["bang"], width=70)
    p.obj("audition_gate", "gate", (200, 900), 2, 1, width=40)
    p.obj("audition_start", "t b b", (200, 940), 1, ["bang", "bang"], width=50)
    p.msg("msg_play", "1", (300, 980))
    p.msg("msg_auditionstarted", "auditionstarted", (120, 980))
    p.msg("msg_auditionended", "auditionended", (120, 1020))
    p.connect("router", out["player"], "player", 0)
    p.connect("router", out["auditionarm"], "audition_timepoint", 0)
    p.connect("router", out["auditiongate"], "audition_gate", 0)
    p.connect("audition_timepoint", 0, "audition_gate", 1)
    p.connect("audition_gate", 0, "audition_start", 0)
    p.connect("audition_start", 1, "msg_play", 0)
    p.connect("audition_start", 0, "msg_auditionstarted", 0)
    p.connect("msg_play", 0, "player", 0)
    p.connect("msg_auditionstarted", 0, "script", 0)
    p.connect("player", 2, "msg_auditionended", 0)
    p.connect("msg_auditionended", 0, "script", 0)

    # -- Live: device ready -> live_set -> observers ---------------------------------------------------
    p.obj("thisdevice", "live.thisdevice", (40, 20), 1, ["bang", "int", "int"], width=100)
    p.obj("ready", "t b b b", (40, 60), 1, ["bang", "bang", "bang"], width=70)
    p.msg("msg_init", "init", (160, 100))
    p.msg("msg_metro_on", "1", (40, 100))
    p.obj("metro", "metro 2000", (40, 140), 2, ["bang"], width=80)
    p.msg("msg_tick", "tick", (40, 180))
    p.obj("liveset", "live.path live_set", (240, 100), 1, 3, width=110)
    p.connect("thisdevice", 0, "ready", 0)
    p.connect("ready", 2, "msg_init", 0)        # first: the script may use the Live API now
    p.connect("ready", 1, "liveset", 0)         # then: the observers get live_set's id
    p.connect("ready", 0, "msg_metro_on", 0)    # last: start pinging the daemon
    p.chain("msg_metro_on", "metro", "msg_tick", "script")
    p.connect("msg_init", 0, "script", 0)
    for i, (prop, key) in enumerate((("tempo", "tempo"), ("signature_numerator", "num"),
                                     ("signature_denominator", "den"), ("is_playing", "playing"))):
        x = 240 + i * 170
        p.obj(f"observe_{key}", f"live.observer {prop}", (x, 150), 2, 2, width=160)
        p.obj(f"prepend_{key}", f"prepend {key}", (x, 190), 1, 1, width=100)
        p.connect("liveset", 0, f"observe_{key}", 1)
        p.connect(f"observe_{key}", 0, f"prepend_{key}", 0)
        p.connect(f"prepend_{key}", 0, "script", 0)

    # -- OSC: to the daemon and back -------------------------------------------------------------------
    p.obj("udpsend", f"udpsend {HOST} {SEND_PORT}", (420, 440), 1, 0, width=150)
    p.obj("udpreceive", f"udpreceive {RECEIVE_PORT}", (600, 240), 1, 1, width=110)
    p.connect("router", out["osc"], "udpsend", 0)
    p.connect("udpreceive", 0, "script", 0)

    # -- the recorder: armed by the script, started by the transport at the bar line -------------------
    # [timepoint] bangs when Live's transport reaches the tick the script set; the [gate] lets that
    # bang through only while a recording is armed. The bang starts [sfrecord~] first, then the
    # [delay] that stops it after the recording's length, then tells the script.
    p.obj("timepoint", "timepoint", (200, 460), 1, ["bang"], width=70)
    p.obj("armgate", "gate", (200, 500), 2, 1, width=40)
    p.obj("start", "t b b b", (200, 540), 1, ["bang", "bang", "bang"], width=70)
    p.msg("msg_rec_on", "1", (330, 580))
    p.obj("stoptimer", "delay", (260, 580), 2, ["bang"], width=50)
    p.msg("msg_recstarted", "recstarted", (120, 580))
    p.obj("stop", "t b b", (260, 620), 1, ["bang", "bang"], width=50)
    p.msg("msg_rec_off", "0", (330, 660))
    p.msg("msg_recstopped", "recstopped", (120, 660))
    p.connect("router", out["arm"], "timepoint", 0)
    p.connect("router", out["gate"], "armgate", 0)
    p.connect("timepoint", 0, "armgate", 1)
    p.connect("armgate", 0, "start", 0)
    p.connect("start", 2, "msg_rec_on", 0)
    p.connect("start", 1, "stoptimer", 0)
    p.connect("start", 0, "msg_recstarted", 0)
    p.connect("msg_rec_on", 0, "recorder", 0)
    p.connect("router", out["delaytime"], "stoptimer", 1)
    p.connect("router", out["delay"], "stoptimer", 0)
    p.connect("stoptimer", 0, "stop", 0)
    p.connect("stop", 1, "msg_rec_off", 0)
    p.connect("stop", 0, "msg_recstopped", 0)
    p.connect("msg_rec_off", 0, "recorder", 0)
    p.connect("router", out["rec"], "recorder", 0)
    p.connect("msg_recstarted", 0, "script", 0)
    p.connect("msg_recstopped", 0, "script", 0)

    # -- the device's face ---------------------------------------------------------------------------
    ux = 760  # patching-view column of the UI boxes
    p.label("label_instrument", "Instrument", (ux, 20), [4, 4, 60, 16])
    p.param("ui_instrument", "live.tab", (ux, 40), [4, 20, 128, 18], ["", "", "float"], "Instrument", "Instrument", 2,
            parameter_enum=["drums", "bass"], parameter_mmax=1, parameter_unitstyle=9,
            parameter_initial_enable=1, parameter_initial=[0])
    p.label("label_bars", "Bars", (ux, 70), [4, 42, 40, 16])
    p.param("ui_bars", "live.menu", (ux, 90), [44, 42, 88, 16], ["", "", "float"], "Bars", "Bars", 2,
            parameter_enum=["1", "2", "4", "8", "16"], parameter_mmax=4,
            parameter_initial_enable=1, parameter_initial=[2])
    p.label("label_takes", "Takes", (ux, 120), [4, 62, 40, 16])
    p.param("ui_takes", "live.numbox", (ux, 140), [44, 62, 44, 16], ["", "float"], "Takes", "Takes", 1,
            parameter_mmin=1.0, parameter_mmax=4.0, parameter_unitstyle=0,
            parameter_initial_enable=1, parameter_initial=[1])
    p.label("label_mode", "Context", (ux, 170), [4, 82, 60, 16])
    p.param("ui_mode", "live.tab", (ux, 190), [4, 98, 128, 18], ["", "", "float"], "Context", "Context", 2,
            parameter_enum=["mix", "click", "mix+click"], parameter_mmax=2, parameter_unitstyle=9,
            parameter_initial_enable=1, parameter_initial=[2])
    for key, box in (("instrument", "ui_instrument"), ("bars", "ui_bars"), ("takes", "ui_takes"), ("mode", "ui_mode")):
        p.obj(f"prepend_{key}", f"prepend {key}", (ux + 160, p.boxes[box]["patching_rect"][1]), 1, 1, width=110)
        p.connect(box, 0, f"prepend_{key}", 0)
        p.connect(f"prepend_{key}", 0, "script", 0)

    p.label("label_prompt", "Prompt (optional), e.g. Genres: Rock. Moods: happy.", (ux, 230), [140, 4, 270, 16])
    p.ui("ui_prompt", "textedit", (ux, 250), [140, 20, 270, 36], 1, ["", "int", "", ""],
         parameter_enable=0, lines=2, wordwrap=1, outputmode=1, bangmode=0, fontsize=10.0,
         hint="Words that steer the generation, e.g. Genres: Rock. Moods: happy.")
    p.param("ui_generate", "live.text", (ux, 300), [140, 60, 100, 20], ["", ""], "Generate", "Generate", 2,
            stored_only=False, parameter_enum=["Generate", "Generate"], parameter_mmax=1)
    p.boxes["ui_generate"].update(mode=0, text="Generate", texton="Generate")
    p.param("ui_cancel", "live.text", (ux, 330), [246, 60, 70, 20], ["", ""], "Cancel", "Cancel", 2,
            stored_only=False, parameter_enum=["Cancel", "Cancel"], parameter_mmax=1)
    p.boxes["ui_cancel"].update(mode=0, text="Cancel", texton="Cancel")
    p.ui("ui_progress", "slider", (ux, 360), [140, 84, 270, 8], 1, [""], parameter_enable=0, orientation=1,
         size=101.0, ignoreclick=1, knobshape=5, hint="Generation progress")
    p.ui("ui_status", "comment", (ux, 390), [140, 94, 270, 32], 1, [], text="Looking for the stage-bridge daemon...",
         linecount=2, fontsize=10.0)
    p.ui("ui_led", "led", (ux, 430), [396, 62, 14, 14], 1, ["int"], parameter_enable=0, ignoreclick=1,
         hint="Lit while the stage-bridge daemon answers")

    # prompt: read the text field when Generate is pressed (typed text counts even without Return)
    p.obj("generate_press", "t l b", (ux + 160, 300), 1, ["", "bang"], width=50)
    p.text_setting("prompt", "ui_prompt", (ux + 300, 250), width=100)
    p.obj("prepend_generate", "prepend generate", (ux + 160, 330), 1, 1, width=110)
    p.obj("prepend_cancel", "prepend cancel", (ux + 160, 360), 1, 1, width=100)
    p.connect("ui_generate", 0, "generate_press", 0)
    p.connect("generate_press", 1, "ui_prompt", 0)
    p.connect("generate_press", 0, "prepend_generate", 0)
    p.connect("prepend_generate", 0, "script", 0)
    p.connect("ui_cancel", 0, "prepend_cancel", 0)
    p.connect("prepend_cancel", 0, "script", 0)
    p.obj("prepend_status", "prepend set", (ux + 460, 390), 1, 1, width=80)
    p.obj("prepend_progress", "prepend set", (ux + 460, 360), 1, 1, width=80)
    p.connect("router", out["status"], "prepend_status", 0)
    p.connect("prepend_status", 0, "ui_status", 0)
    p.connect("router", out["progress"], "prepend_progress", 0)
    p.connect("prepend_progress", 0, "ui_progress", 0)
    p.connect("router", out["led"], "ui_led", 0)

    # results: the takes, a button that shows the file, and insertion into a track
    p.label("label_results", "Results", (ux, 470), [420, 4, 60, 16])
    p.ui("ui_results", "umenu", (ux, 490), [420, 20, 196, 18], 1, ["int", "", ""], parameter_enable=0,
         items="<empty>", fontsize=10.0, hint="The last generated takes: pick one to insert or show")
    p.param("ui_reveal", "live.text", (ux, 520), [420, 42, 96, 16], ["", ""], "Show file", "Show", 2,
            stored_only=False, parameter_enum=["Show file", "Show file"], parameter_mmax=1)
    p.boxes["ui_reveal"].update(mode=0, text="Show file", texton="Show file")
    p.param("ui_target", "live.tab", (ux, 550), [420, 62, 196, 16], ["", "", "float"], "Insert into", "Insert", 2,
            parameter_enum=["Arrangement", "Session"], parameter_mmax=1, parameter_unitstyle=9,
            parameter_initial_enable=1, parameter_initial=[0])
    p.label("label_track", "Track", (ux, 580), [420, 82, 40, 16])
    p.ui("ui_tracks", "umenu", (ux, 600), [460, 82, 156, 18], 1, ["int", "", ""], parameter_enable=0,
         items="<empty>", fontsize=10.0, hint="The audio track that Insert puts the take on")
    p.param("ui_insert", "live.text", (ux, 630), [420, 104, 196, 20], ["", ""], "Insert clip", "Insert", 2,
            stored_only=False, parameter_enum=["Insert clip", "Insert clip"], parameter_mmax=1)
    p.boxes["ui_insert"].update(mode=0, text="Insert clip", texton="Insert clip")
    for key, box, port in (("take", "ui_results", 0), ("reveal", "ui_reveal", 0), ("target", "ui_target", 0),
                           ("track", "ui_tracks", 0), ("insert", "ui_insert", 0)):
        y = p.boxes[box]["patching_rect"][1]
        p.obj(f"prepend_{key}", f"prepend {key}", (ux + 220, y), 1, 1, width=100)
        p.connect(box, port, f"prepend_{key}", 0)
        p.connect(f"prepend_{key}", 0, "script", 0)
    p.connect("router", out["results"], "ui_results", 0)
    p.connect("router", out["tracks"], "ui_tracks", 0)

    # audition: a button and the level (a Live parameter in dB, saved with the set)
    ax = DEVICE_WIDTH - 76
    p.param("ui_audition", "live.text", (ux, 1000), [ax, 4, 72, 20], ["", ""], "Audition", "Audition", 2,
            stored_only=False, parameter_enum=["Audition", "Audition"], parameter_mmax=1)
    p.boxes["ui_audition"].update(mode=0, text="Audition", texton="Audition")
    p.obj("prepend_audition", "prepend audition", (ux + 160, 1000), 1, 1, width=110)
    p.connect("ui_audition", 0, "prepend_audition", 0)
    p.connect("prepend_audition", 0, "script", 0)
    p.param("ui_level", "live.dial", (ux, 1040), [ax + 12, 30, 48, 48], ["", "float"], "Audition level", "Level", 0,
            parameter_mmin=-70.0, parameter_mmax=6.0, parameter_unitstyle=4,
            parameter_initial_enable=1, parameter_initial=[0.0], parameter_modmode=0)
    p.connect("ui_level", 0, "dbtoa", 0)

    # settings: the daemon's folder and the ports
    p.label("label_home", "Daemon folder (optional)", (ux, 670), [4, 130, 150, 16])
    p.ui("ui_home", "textedit", (ux, 690), [4, 146, 150, 18], 1, ["", "int", "", ""], parameter_enable=0,
         lines=1, wordwrap=0, outputmode=1, bangmode=0, fontsize=10.0,
         hint="Only if the device cannot find it: the stage-bridge folder that holds bounces/")
    p.text_setting("home", "ui_home", (ux + 320, 690), width=90)
    p.connect("generate_press", 1, "ui_home", 0)
    p.label("label_command", "stage-bridge command", (ux, 710), [160, 130, 156, 16])
    p.ui("ui_command", "textedit", (ux, 730), [160, 146, 156, 18], 1, ["", "int", "", ""], parameter_enable=0,
         lines=1, wordwrap=0, outputmode=1, bangmode=0, fontsize=10.0,
         hint="Only if the device cannot start the daemon: the path of stage-bridge (or its folder), then Return")
    p.text_setting("command", "ui_command", (ux + 440, 730), width=110)

    # the saved texts, shown again when the set is opened: `set <text>` shows a text without output and
    # `clear` empties the field (https://docs.cycling74.com/max8/refpages/textedit)
    for key, box in (("prompt", "ui_prompt"), ("home", "ui_home"), ("command", "ui_command")):
        p.connect("router", out[f"show{key}"], box, 0)

    p.label("label_ports", "Ports: send / receive", (ux, 750), [320, 130, 110, 16])
    for i, (key, longname, port, dest) in enumerate((("sendport", "Send port", SEND_PORT, "udpsend"),
                                                     ("recvport", "Receive port", RECEIVE_PORT, "udpreceive"))):
        box = f"ui_{key}"
        p.param(box, "live.numbox", (ux, 770 + 60 * i), [320 + 56 * i, 146, 50, 16], ["", "float"], longname,
                longname, 1, parameter_mmin=1024.0, parameter_mmax=65535.0, parameter_unitstyle=0,
                parameter_initial_enable=1, parameter_initial=[port])
        p.obj(f"port_{key}", "prepend port", (ux + 160, 770 + 60 * i), 1, 1, width=90)
        p.obj(f"prepend_{key}", f"prepend {key}", (ux + 270, 770 + 60 * i), 1, 1, width=110)
        p.connect(box, 0, f"port_{key}", 0)
        p.connect(f"port_{key}", 0, dest, 0)
        p.connect(box, 0, f"prepend_{key}", 0)
        p.connect(f"prepend_{key}", 0, "script", 0)

    p.ui("title", "comment", (ux, 880), [440, 146, DEVICE_WIDTH - 444, 18], 1, [], text="STAGE Bridge", fontsize=10.0,
         textjustification=2)

    boxes = [{"box": p.boxes[name]} for name in p.boxes]
    return {
        "patcher": {
            "fileversion": 1,
            "appversion": APPVERSION,
            "classnamespace": "box",
            "rect": [100.0, 100.0, 1460.0, 960.0],
            "openrect": [0.0, 0.0, float(W), float(DEVICE_HEIGHT)],
            "bglocked": 0,
            "openinpresentation": 1,
            "default_fontsize": 10.0,
            "default_fontface": 0,
            "default_fontname": "Arial Bold",
            "gridonopen": 1,
            "gridsize": [8.0, 8.0],
            "gridsnaponopen": 1,
            "objectsnaponopen": 1,
            "statusbarvisible": 2,
            "toolbarvisible": 1,
            "boxanimatetime": 500,
            "enablehscroll": 1,
            "enablevscroll": 1,
            "devicewidth": float(W),
            "description": "Records the song at a bar line and asks the stage-bridge daemon for a drum or bass stem.",
            "digest": "STAGE stem generation via the stage-bridge daemon",
            "tags": "",
            "style": "",
            "subpatcher_template": "",
            "assistshowspatchername": 0,
            "boxes": boxes,
            "lines": p.lines,
            "parameters": dict(p.parameters, inherited_shortname=1),
            # as Max 9 writes it: one entry per file a box uses, sorted by name, each with where it was found
            "dependency_cache": [{"name": name, "bootpath": BOOTPATH, "type": "TEXT", "implicit": 1}
                                 for name in sorted(JS_FILES)],
            "latency": 0,
            "is_mpe": 0,
            "external_mpe_tuning_enabled": 0,
            "minimum_live_version": "",
            "minimum_max_version": "",
            "platform_compatibility": 0,
            "project": {
                "version": 1, "creationdate": 3590052493, "modificationdate": 3590052493,
                "viewrect": [0.0, 0.0, 300.0, 500.0], "autoorganize": 1, "hideprojectwindow": 1,
                "showdependencies": 1, "autolocalize": 0,
                # Max 9 lists the five kinds even when empty; files that boxes use are implicit dependencies
                # (dependency_cache), not project contents
                "contents": {"patchers": {}, "media": {}, "code": {}, "data": {}, "other": {}}, "layout": {},
                "searchpath": {}, "detailsvisible": 0, "amxdtype": int.from_bytes(AUDIO_EFFECT, "big"),
                "readonly": 0, "devpathtype": 0, "devpath": ".", "sortmode": 0, "viewmode": 0, "includepackages": 0,
            },
            "autosave": 0,
        }
    }


# -- serialising ----------------------------------------------------------------------------------

def patcher_bytes(patcher: dict[str, Any]) -> bytes:
    return (json.dumps(patcher, indent="\t", ensure_ascii=True) + "\n").encode("ascii")


def chunk(tag: bytes, data: bytes) -> bytes:
    """A top-level .amxd chunk: tag, little-endian size, data."""
    assert len(tag) == 4
    return tag + struct.pack("<I", len(data)) + data


def mx_field(tag: bytes, data: bytes) -> bytes:
    """A field of the 'mx@c' collective: tag, big-endian size including this 8-byte header, data."""
    assert len(tag) == 4
    return tag + struct.pack(">I", len(data) + 8) + data


def padded_name(name: str) -> bytes:
    raw = name.encode("utf-8") + b"\0"
    return raw + b"\0" * (-len(raw) % 4)


def collective(files: Iterable[tuple[str, bytes, bytes, int]]) -> bytes:
    """'mx@c' + directory of (name, 4-char type, data, flag); data back to back after a 16-byte header."""
    body = b""
    entries = b""
    offset = 16
    for name, kind, data, flag in files:
        fields = (mx_field(b"type", kind) + mx_field(b"fnam", padded_name(name)) +
                  mx_field(b"sz32", struct.pack(">I", len(data))) + mx_field(b"of32", struct.pack(">I", offset)) +
                  mx_field(b"vers", struct.pack(">I", 0)) + mx_field(b"flag", struct.pack(">I", flag)) +
                  mx_field(b"mdat", struct.pack(">I", MDAT)))
        entries += mx_field(b"dire", fields)
        body += data
        offset += len(data)
    directory = mx_field(b"dlst", entries)
    return b"mx@c" + struct.pack(">IQ", 16, 16 + len(body)) + body + directory


def amxd_frozen(patcher_json: bytes, scripts: dict[str, bytes]) -> bytes:
    files = [(AMXD_NAME, b"JSON", patcher_json + b"\0", DEVICE_FLAG)]
    files += [(name, b"TEXT", scripts[name], 0) for name in JS_FILES]
    return (chunk(b"ampf", AUDIO_EFFECT) + chunk(b"meta", struct.pack("<I", FROZEN_META)) +
            chunk(b"ptch", collective(files)))


def amxd_unfrozen(patcher_json: bytes) -> bytes:
    return (chunk(b"ampf", AUDIO_EFFECT) + chunk(b"meta", struct.pack("<I", 0)) +
            chunk(b"ptch", patcher_json + b"\0"))


def read_scripts(src: Path = SRC) -> dict[str, bytes]:
    return {name: (src / name).read_bytes() for name in JS_FILES}


def build_outputs(src: Path = SRC) -> dict[str, bytes]:
    """Relative path (inside max_for_live/) -> bytes, for every file the build writes."""
    patcher_json = patcher_bytes(device_patcher())
    return {f"src/{MAXPAT_NAME}": patcher_json, AMXD_NAME: amxd_frozen(patcher_json, read_scripts(src))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=None, help="write the .amxd and .maxpat into this folder")
    ap.add_argument("--check", action="store_true", help="compare with the committed files; write nothing")
    ap.add_argument("--unfrozen", type=Path, default=None, metavar="DIR",
                    help="also write an unfrozen device and its .js files into DIR (to edit it in Max)")
    args = ap.parse_args(argv)
    outputs = build_outputs()
    if args.check:
        stale = [rel for rel, data in outputs.items() if not (HERE / rel).is_file() or (HERE / rel).read_bytes() != data]
        for rel in stale:
            print(f"out of date: max_for_live/{rel} (run python max_for_live/build.py)", file=sys.stderr)
        return 1 if stale else 0
    for rel, data in outputs.items():
        path = (args.out / Path(rel).name) if args.out else HERE / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        print(f"wrote {path} ({len(data):,} bytes)")
    if args.unfrozen:
        args.unfrozen.mkdir(parents=True, exist_ok=True)
        (args.unfrozen / AMXD_NAME).write_bytes(amxd_unfrozen(outputs[f"src/{MAXPAT_NAME}"]))
        for name in JS_FILES:
            shutil.copyfile(SRC / name, args.unfrozen / name)
        print(f"wrote an unfrozen {AMXD_NAME} and {', '.join(JS_FILES)} into {args.unfrozen}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
