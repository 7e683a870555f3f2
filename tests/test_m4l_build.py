"""The Max for Live device build (max_for_live/build.py): the .amxd is read back by an independent
parser here (layout as in Ableton's own devices, see build.py), its patcher is checked object by
object and patch cord by patch cord, and the committed files must equal a fresh build."""

from __future__ import annotations

import importlib.util
import json
import os
import struct
import subprocess
import sys
from collections import deque
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
M4L = REPO / "max_for_live"
AMXD = M4L / "STAGE Bridge.amxd"
MAXPAT = M4L / "src" / "STAGE Bridge.maxpat"
SCRIPTS = ("stage_device.js", "stage_logic.js", "stage_launcher.js")


def load_build():
    spec = importlib.util.spec_from_file_location("m4l_build", M4L / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build = load_build()


# -- an independent reader of the .amxd layout -----------------------------------------------------

def read_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """Top-level chunks: 4-byte tag, uint32 little-endian size, data; they must tile the file."""
    chunks, pos = [], 0
    while pos < len(data):
        assert pos + 8 <= len(data), f"truncated chunk header at {pos}"
        tag = data[pos:pos + 4]
        (size,) = struct.unpack("<I", data[pos + 4:pos + 8])
        assert pos + 8 + size <= len(data), f"chunk {tag!r} runs past the end of the file"
        chunks.append((tag, data[pos + 8:pos + 8 + size]))
        pos += 8 + size
    assert pos == len(data)
    return chunks


def read_fields(data: bytes) -> list[tuple[bytes, bytes]]:
    """'mx@c' fields: tag, uint32 big-endian size including the 8-byte header, data."""
    fields, pos = [], 0
    while pos < len(data):
        tag = data[pos:pos + 4]
        (size,) = struct.unpack(">I", data[pos + 4:pos + 8])
        assert size >= 8 and pos + size <= len(data), (tag, size)
        fields.append((tag, data[pos + 8:pos + size]))
        pos += size
    assert pos == len(data)
    return fields


def read_collective(ptch: bytes) -> dict[str, dict[str, Any]]:
    assert ptch[:4] == b"mx@c"
    header_size, directory = struct.unpack(">IQ", ptch[4:16])
    assert header_size == 16
    assert ptch[directory:directory + 4] == b"dlst"
    [(tag, entries)] = read_fields(ptch[directory:])
    assert tag == b"dlst"
    files: dict[str, dict[str, Any]] = {}
    expected_offset = 16
    for tag, entry in read_fields(entries):
        assert tag == b"dire"
        fields = dict(read_fields(entry))
        assert list(fields) == [b"type", b"fnam", b"sz32", b"of32", b"vers", b"flag", b"mdat"]
        name_raw = fields[b"fnam"]
        assert len(name_raw) % 4 == 0 and name_raw.endswith(b"\0")
        name = name_raw.rstrip(b"\0").decode()
        (size,), (offset,) = struct.unpack(">I", fields[b"sz32"]), struct.unpack(">I", fields[b"of32"])
        assert offset == expected_offset, f"{name}: files are stored back to back"
        expected_offset += size
        files[name] = {"type": fields[b"type"], "flag": struct.unpack(">I", fields[b"flag"])[0],
                       "data": ptch[offset:offset + size], "mdat": struct.unpack(">I", fields[b"mdat"])[0]}
    assert expected_offset == directory, "the directory follows the last file"
    return files


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("m4l-build")
    assert build.main(["--out", str(out), "--unfrozen", str(out / "unfrozen")]) == 0
    data = (out / "STAGE Bridge.amxd").read_bytes()
    chunks = read_chunks(data)
    files = read_collective(chunks[2][1])
    patcher = json.loads(files["STAGE Bridge.amxd"]["data"][:-1])["patcher"]
    return {"out": out, "data": data, "chunks": chunks, "files": files, "patcher": patcher,
            "maxpat": (out / "STAGE Bridge.maxpat").read_bytes()}


# -- the container ---------------------------------------------------------------------------------

def test_header_device_type_and_chunk_lengths(built):
    data, chunks = built["data"], built["chunks"]
    assert data[:4] == b"ampf"
    assert [tag for tag, _ in chunks] == [b"ampf", b"meta", b"ptch"]
    assert chunks[0][1] == b"aaaa", "an audio effect"
    assert len(chunks[1][1]) == 4 and struct.unpack("<I", chunks[1][1])[0] == 7, "meta of a frozen device"
    assert sum(8 + len(body) for _, body in chunks) == len(data)
    assert struct.unpack("<I", data[28:32])[0] == len(data) - 32


def test_frozen_files_the_device_and_its_scripts(built):
    files = built["files"]
    assert list(files) == ["STAGE Bridge.amxd", *SCRIPTS]
    device = files["STAGE Bridge.amxd"]
    assert device["type"] == b"JSON" and device["flag"] == 0x11 and device["data"].endswith(b"}\n\0")
    assert device["data"][:-1] == built["maxpat"], "the frozen patcher is the readable .maxpat"
    for name in SCRIPTS:
        assert files[name]["type"] == b"TEXT" and files[name]["flag"] == 0
        assert files[name]["data"] == (M4L / "src" / name).read_bytes()
    assert {f["mdat"] for f in files.values()} == {build.MDAT}, "no clock in the build"


def test_unfrozen_variant(built):
    unfrozen = built["out"] / "unfrozen"
    chunks = read_chunks((unfrozen / "STAGE Bridge.amxd").read_bytes())
    assert [tag for tag, _ in chunks] == [b"ampf", b"meta", b"ptch"] and chunks[0][1] == b"aaaa"
    assert chunks[2][1] == built["maxpat"] + b"\0"
    for name in SCRIPTS:
        assert (unfrozen / name).read_bytes() == (M4L / "src" / name).read_bytes()


def test_committed_files_equal_a_fresh_build(built):
    assert AMXD.read_bytes() == built["data"], "run: python max_for_live/build.py"
    assert MAXPAT.read_bytes() == built["maxpat"], "run: python max_for_live/build.py"
    assert build.main(["--check"]) == 0
    again = build.build_outputs()
    assert again["STAGE Bridge.amxd"] == built["data"], "same sources, same bytes"


# -- the patcher: objects and patch cords ---------------------------------------------------------

class Graph:
    def __init__(self, patcher: dict[str, Any]):
        self.boxes = {b["box"]["id"]: b["box"] for b in patcher["boxes"]}
        assert len(self.boxes) == len(patcher["boxes"]), "box ids are unique"
        self.edges: list[tuple[str, int, str, int]] = []
        for line in patcher["lines"]:
            (src, outlet), (dst, inlet) = line["patchline"]["source"], line["patchline"]["destination"]
            assert src in self.boxes and dst in self.boxes, line
            assert 0 <= outlet < self.boxes[src]["numoutlets"], f"{src} has no outlet {outlet}"
            assert 0 <= inlet < self.boxes[dst]["numinlets"], f"{dst} has no inlet {inlet}"
            self.edges.append((src, outlet, dst, inlet))

    def find(self, text: str | None = None, maxclass: str | None = None, **attrs: Any) -> list[str]:
        found = []
        for bid, box in self.boxes.items():
            if text is not None and box.get("text") != text:
                continue
            if maxclass is not None and box["maxclass"] != maxclass:
                continue
            if all(box.get(k) == v for k, v in attrs.items()):
                found.append(bid)
        return found

    def one(self, text: str | None = None, maxclass: str | None = None, **attrs: Any) -> str:
        found = self.find(text, maxclass, **attrs)
        assert len(found) == 1, (text, maxclass, attrs, found)
        return found[0]

    def cord(self, src: str, outlet: int, dst: str, inlet: int) -> bool:
        return (src, outlet, dst, inlet) in self.edges

    def reaches(self, src: str, dst: str, outlet: int | None = None, inlet: int | None = None, via: int = 6) -> bool:
        """Is there a path of patch cords src -> ... -> dst (starting at `outlet`, ending at `inlet`)?"""
        todo = deque([(src, 0)])
        seen = {src}
        while todo:
            box, depth = todo.popleft()
            for s, o, d, i in self.edges:
                if s != box or (box == src and outlet is not None and o != outlet):
                    continue
                if d == dst and (inlet is None or i == inlet):
                    return True
                if d not in seen and depth < via:
                    seen.add(d)
                    todo.append((d, depth + 1))
        return False

    def valueof(self, bid: str) -> dict[str, Any]:
        return self.boxes[bid]["saved_attribute_attributes"]["valueof"]


@pytest.fixture(scope="module")
def graph(built) -> Graph:
    return Graph(built["patcher"])


def route_outlet(graph: Graph, router: str, key: str) -> int:
    words = graph.boxes[router]["text"].split()[1:]
    return words.index(key)


def test_the_script_and_its_router(graph, built):
    js = graph.one("js stage_device.js")
    assert graph.boxes[js]["saved_object_attributes"]["filename"] == "stage_device.js"
    router = graph.one(maxclass="newobj", text="route " + " ".join(build.ROUTE_KEYS))
    assert graph.cord(js, 0, router, 0)
    logic = graph.one("js stage_logic.js")
    assert graph.boxes[logic]["saved_object_attributes"]["filename"] == "stage_logic.js", \
        "the include()d logic is a dependency a box names (Max's freezing and maxdiff see it)"


def test_udpsend_to_the_daemon_port_and_udpreceive_back_to_the_script(graph):
    js = graph.one("js stage_device.js")
    router = graph.one(maxclass="newobj", text="route " + " ".join(build.ROUTE_KEYS))
    send = graph.one("udpsend 127.0.0.1 9000")
    receive = graph.one("udpreceive 9001")
    assert graph.cord(router, route_outlet(graph, router, "osc"), send, 0)
    assert graph.cord(receive, 0, js, 0)
    # the ports are device settings (Live parameters, stored with the set) wired to both objects
    for longname, port, obj, key in (("Send port", 9000, send, "sendport"), ("Receive port", 9001, receive, "recvport")):
        box = graph.one(maxclass="live.numbox", varname=longname)
        v = graph.valueof(box)
        assert v["parameter_initial"] == [port] and v["parameter_type"] == 1
        assert v["parameter_mmin"] >= 1024 and v["parameter_mmax"] == 65535
        [prep] = [d for s, o, d, i in graph.edges if s == box and graph.boxes[d].get("text") == "prepend port"]
        assert graph.cord(prep, 0, obj, 0)
        assert graph.reaches(box, js), f"the script learns the {key}"


def test_live_observer_chain(graph):
    js = graph.one("js stage_device.js")
    device = graph.one("live.thisdevice")
    liveset = graph.one("live.path live_set")
    assert graph.reaches(device, liveset, outlet=0)
    props = {}
    for prop, key in (("tempo", "tempo"), ("signature_numerator", "num"), ("signature_denominator", "den"),
                      ("is_playing", "playing")):
        observer = graph.one(f"live.observer {prop}")
        assert graph.cord(liveset, 0, observer, 1), f"live_set's id goes to the {prop} observer's right inlet"
        prepend = graph.one(f"prepend {key}")
        assert graph.cord(observer, 0, prepend, 0) and graph.cord(prepend, 0, js, 0)
        props[prop] = observer
    assert len(props) == 4
    # the script is told the Live API is ready (init) before the observers fire
    init = graph.one("init", maxclass="message")
    trigger = [d for s, o, d, i in graph.edges if s == device][0]
    assert graph.cord(trigger, 2, init, 0) and graph.cord(init, 0, js, 0)
    assert graph.cord(trigger, 1, liveset, 0)


def test_periodic_ping(graph):
    js = graph.one("js stage_device.js")
    metro = graph.one("metro 2000")
    tick = graph.one("tick", maxclass="message")
    assert graph.cord(metro, 0, tick, 0) and graph.cord(tick, 0, js, 0)
    assert graph.reaches(graph.one("live.thisdevice"), metro, inlet=0)


def test_audio_passes_through_and_feeds_the_recorder(graph):
    plugin, plugout = graph.one("plugin~"), graph.one("plugout~")
    recorder = graph.one(maxclass="newobj", text="sfrecord~ 2 @bitdepth 24")
    for ch in (0, 1):
        assert graph.cord(plugin, ch, plugout, ch), "audio passes through unchanged"
        assert graph.cord(plugin, ch, recorder, ch)
    # the only other sound is the audition, through its level: the input reaches the output unchanged
    player = graph.one("sfplay~ 2")
    levels = [graph.one(maxclass="newobj", id=f"level_{ch}") for ch in (0, 1)]
    assert {(s, o, i) for s, o, d, i in graph.edges if d == plugout} == \
        {(plugin, 0, 0), (plugin, 1, 1), (levels[0], 0, 0), (levels[1], 0, 1)}
    for ch in (0, 1):
        assert graph.boxes[levels[ch]]["text"] == "*~ 1." and graph.cord(player, ch, levels[ch], 0)


def test_recorder_control(graph):
    js = graph.one("js stage_device.js")
    router = graph.one(maxclass="newobj", text="route " + " ".join(build.ROUTE_KEYS))
    recorder = graph.one(maxclass="newobj", text="sfrecord~ 2 @bitdepth 24")
    timepoint, gate, delay = graph.one("timepoint", id="timepoint"), graph.one("gate", id="armgate"), graph.one("delay")
    rec_on, rec_off = graph.one("1", maxclass="message", id="msg_rec_on"), graph.one("0", maxclass="message")
    out = lambda key: route_outlet(graph, router, key)  # noqa: E731
    assert graph.cord(router, out("rec"), recorder, 0), "open <path> wave / 0"
    assert graph.cord(router, out("arm"), timepoint, 0), "the start tick"
    assert graph.cord(router, out("gate"), gate, 0) and graph.cord(timepoint, 0, gate, 1)
    assert graph.cord(router, out("delaytime"), delay, 1) and graph.cord(router, out("delay"), delay, 0)
    assert graph.reaches(gate, rec_on) and graph.cord(rec_on, 0, recorder, 0), "the bar line starts the recorder"
    assert graph.reaches(gate, delay, inlet=0), "... and the timer that stops it"
    assert graph.reaches(delay, rec_off) and graph.cord(rec_off, 0, recorder, 0)
    for word, after in (("recstarted", gate), ("recstopped", delay)):
        msg = graph.one(word, maxclass="message")
        assert graph.reaches(after, msg) and graph.cord(msg, 0, js, 0)
    # the recorder starts before anything else hears of it ([trigger] fires right to left)
    start = [d for s, o, d, i in graph.edges if s == gate][0]
    assert graph.cord(start, 2, rec_on, 0) and graph.cord(start, 1, delay, 0)


def test_user_interface(graph):
    js = graph.one("js stage_device.js")
    router = graph.one(maxclass="newobj", text="route " + " ".join(build.ROUTE_KEYS))
    out = lambda key: route_outlet(graph, router, key)  # noqa: E731

    def param(maxclass: str, longname: str) -> tuple[str, dict[str, Any]]:
        box = graph.one(maxclass=maxclass, varname=longname)
        assert graph.boxes[box]["parameter_enable"] == 1 and graph.boxes[box]["presentation"] == 1
        return box, graph.valueof(box)

    box, v = param("live.tab", "Instrument")
    assert v["parameter_enum"] == ["drums", "bass"] and graph.reaches(box, js)
    box, v = param("live.menu", "Bars")
    assert v["parameter_enum"] == ["1", "2", "4", "8", "16"] and graph.reaches(box, js)
    box, v = param("live.numbox", "Takes")
    assert (v["parameter_mmin"], v["parameter_mmax"], v["parameter_type"]) == (1, 4, 1) and graph.reaches(box, js)
    box, v = param("live.tab", "Context")
    assert v["parameter_enum"] == ["mix", "click", "mix+click"] and graph.reaches(box, js)
    generate, _ = param("live.text", "Generate")
    cancel, _ = param("live.text", "Cancel")
    insert, _ = param("live.text", "Insert clip")
    target, v = param("live.tab", "Insert into")
    assert v["parameter_enum"] == ["Arrangement", "Session"]
    for box in (generate, cancel, insert, target):
        assert graph.reaches(box, js)
    prompt = graph.one(maxclass="textedit", id="ui_prompt")
    assert graph.reaches(prompt, js) and graph.reaches(generate, prompt), "Generate reads the typed prompt"
    assert graph.reaches(graph.one(maxclass="textedit", id="ui_home"), js)
    progress = graph.one(maxclass="slider")
    assert graph.reaches(router, progress, outlet=out("progress"))
    status = graph.one(maxclass="comment", id="ui_status")
    assert graph.reaches(router, status, outlet=out("status"))
    results = graph.one(maxclass="umenu", id="ui_results")
    assert graph.cord(router, out("results"), results, 0) and graph.reaches(results, js)
    tracks = graph.one(maxclass="umenu", id="ui_tracks")
    assert graph.cord(router, out("tracks"), tracks, 0) and graph.reaches(tracks, js)
    assert graph.cord(router, out("led"), graph.one(maxclass="led"), 0)


def test_device_layout_and_parameters(built, graph):
    p = built["patcher"]
    width, height = p["devicewidth"], build.DEVICE_HEIGHT
    assert p["openinpresentation"] == 1 and p["openrect"][3] == height
    assert p["project"]["amxdtype"] == int.from_bytes(b"aaaa", "big")
    for bid, box in graph.boxes.items():
        if box.get("presentation"):
            x, y, w, h = box["presentation_rect"]
            assert 0 <= x and 0 <= y and x + w <= width and y + h <= height, (bid, box["presentation_rect"])
    params = {k: v for k, v in p["parameters"].items() if k != "inherited_shortname"}
    enabled = {bid for bid, box in graph.boxes.items()
               if box.get("parameter_enable") == 1 or box.get("saved_object_attributes", {}).get("parameter_enable") == 1}
    assert set(params) == enabled
    longnames = [v[0] for v in params.values()]
    assert len(longnames) == len(set(longnames)), "Live recalls parameters by long name"
    for bid, (longname, shortname, _) in params.items():
        assert graph.valueof(bid)["parameter_longname"] == longname


def test_the_built_file_is_readable_by_the_test_reader_only_when_complete(built):
    """The reader above is strict: a truncated or padded file is rejected."""
    data = built["data"]
    with pytest.raises(AssertionError):
        read_chunks(data[:-1])
    with pytest.raises(AssertionError):
        read_chunks(data + b"\0")


def test_daemon_launcher(graph, built):
    """[node.script stage_launcher.js @autostart 1] as Max 9 saves a node.script box (Ableton's Test.amxd),
    fed by the script's `node` messages; its left outlet comes back to the script as `launcher ...`."""
    js = graph.one("js stage_device.js")
    router = graph.one(maxclass="newobj", text="route " + " ".join(build.ROUTE_KEYS))
    node = graph.one("node.script stage_launcher.js @autostart 1")
    box = graph.boxes[node]
    assert box["saved_object_attributes"] == {"autostart": 1, "defer": 0, "watch": 0}
    assert box["textfile"]["filename"] == "stage_launcher.js" and box["numoutlets"] == 2
    assert graph.cord(router, route_outlet(graph, router, "node"), node, 0)
    prepend = graph.one("prepend launcher")
    assert graph.cord(node, 0, prepend, 0) and graph.cord(prepend, 0, js, 0)
    assert graph.reaches(graph.one(maxclass="textedit", id="ui_command"), js), "the command path setting"


def test_audition_chain(graph):
    """The take plays when the transport reaches its start: [timepoint] -> [gate] -> 1 -> [sfplay~ 2];
    the script opens/seeks/stops it; the level is a dB live.dial -> [dbtoa] -> both [*~]."""
    js = graph.one("js stage_device.js")
    router = graph.one(maxclass="newobj", text="route " + " ".join(build.ROUTE_KEYS))
    out = lambda key: route_outlet(graph, router, key)  # noqa: E731
    player = graph.one("sfplay~ 2")
    timepoint, gate = graph.one("timepoint", id="audition_timepoint"), graph.one("gate", id="audition_gate")
    play = graph.one("1", maxclass="message", id="msg_play")
    assert graph.cord(router, out("player"), player, 0)
    assert graph.cord(router, out("auditionarm"), timepoint, 0) and graph.cord(router, out("auditiongate"), gate, 0)
    assert graph.cord(timepoint, 0, gate, 1) and graph.reaches(gate, play) and graph.cord(play, 0, player, 0)
    start = [d for s, o, d, i in graph.edges if s == gate][0]
    assert graph.cord(start, 1, play, 0), "the player starts before the script hears of it"
    for word, source in (("auditionstarted", start), ("auditionended", player)):
        msg = graph.one(word, maxclass="message")
        assert graph.reaches(source, msg) and graph.cord(msg, 0, js, 0)
    assert graph.cord(player, 2, graph.one("auditionended", maxclass="message"), 0), "the end-of-file bang"
    dial = graph.one(maxclass="live.dial", varname="Audition level")
    v = graph.valueof(dial)
    assert (v["parameter_mmin"], v["parameter_mmax"], v["parameter_unitstyle"], v["parameter_initial"]) == (-70, 6, 4, [0.0])
    assert v["parameter_invisible"] == 1, "stored with the set (2 would be hidden: not stored)"
    dbtoa = graph.one("dbtoa")
    assert graph.cord(dial, 0, dbtoa, 0)
    assert all(graph.cord(dbtoa, 0, graph.one(maxclass="newobj", id=f"level_{ch}"), 1) for ch in (0, 1))
    button = graph.one(maxclass="live.text", varname="Audition")
    assert graph.reaches(button, js)


def test_state_saved_with_the_set(graph, built):
    """A [pattr] in parameter mode with the blob type (3) holds the state; the script stores it with
    `set` and gets it back as `saved ...`; the text fields are refilled from the script."""
    js = graph.one("js stage_device.js")
    router = graph.one(maxclass="newobj", text="route " + " ".join(build.ROUTE_KEYS))
    pattr = graph.one("pattr stage_state @parameter_enable 1")
    box = graph.boxes[pattr]
    assert box["saved_object_attributes"]["parameter_enable"] == 1
    assert graph.valueof(pattr)["parameter_type"] == 3 and box["varname"] == "stage_state"
    assert built["patcher"]["parameters"][pattr][0] == "STAGE state"
    assert graph.cord(router, route_outlet(graph, router, "state"), pattr, 0)
    prepend = graph.one("prepend saved")
    assert graph.cord(pattr, 0, prepend, 0) and graph.cord(prepend, 0, js, 0)
    for key in ("prompt", "home", "command"):
        assert graph.cord(router, route_outlet(graph, router, f"show{key}"), graph.one(maxclass="textedit", id=f"ui_{key}"), 0)


def test_metadata_like_max_9(built):
    """appversion, dependency_cache and project as in devices Max 9.0.10 saved (maxdevtools' test files)."""
    p = built["patcher"]
    assert p["appversion"]["major"] == 9
    assert p["dependency_cache"] == [{"name": n, "bootpath": build.BOOTPATH, "type": "TEXT", "implicit": 1}
                                     for n in sorted(SCRIPTS)]
    assert list(p["dependency_cache"][0]) == ["name", "bootpath", "type", "implicit"]
    assert p["project"]["contents"] == {"patchers": {}, "media": {}, "code": {}, "data": {}, "other": {}}


MAXDIFF = [Path(p) for p in (os.environ.get("MAXDIFF_DIR", ""),) if p]


def maxdiff_dir() -> Path | None:
    """Ableton's maxdiff (github.com/Ableton/maxdevtools, MIT): its folder from MAXDIFF_DIR, else None."""
    for d in MAXDIFF:
        if (d / "amxd_textconv.py").is_file() and (d / "frozen_device_printer.py").is_file():
            return d
    return None


def test_ableton_maxdiff_reads_the_device_and_finds_every_frozen_file(built):
    """Ableton's own reader prints the frozen device; every frozen file is used by a box (no
    "NOT FOUND IN PATCH"). Needs a checkout of maxdiff (set MAXDIFF_DIR); the same check, re-implemented
    after its get_dependency_filenames, runs below without it."""
    d = maxdiff_dir()
    if d is None:
        pytest.skip("no maxdiff checkout (set MAXDIFF_DIR to github.com/Ableton/maxdevtools' maxdiff folder)")
    run = subprocess.run([sys.executable, str(d / "amxd_textconv.py"), str(built["out"] / "STAGE Bridge.amxd")],
                         cwd=d, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    text = run.stdout
    assert text.startswith("Audio Effect Device\n") and "Device is frozen" in text
    assert "NOT FOUND IN PATCH" not in text, text
    for name in SCRIPTS:
        assert f"{name}: " in text and f"{name}: {len(built['files'][name]['data'])} bytes" in text


def test_every_frozen_file_is_used_by_a_box(built):
    """What maxdiff's get_dependency_filenames counts as a used file (maxdevtools, get_frozen_stats.py):
    a js box's saved filename, a node.script's first argument."""
    used = set()
    for entry in built["patcher"]["boxes"]:
        box = entry["box"]
        text = box.get("text", "")
        if text.startswith("node.script "):
            used.add(text.split()[1])
        elif box.get("saved_object_attributes", {}).get("filename"):
            used.add(box["saved_object_attributes"]["filename"])
    assert set(built["files"]) - {"STAGE Bridge.amxd"} == used == set(SCRIPTS)


def test_byte_reproducible_across_processes(tmp_path):
    """Two builds in separate processes, with different working folders, time zones and umasks, write
    the same bytes as the committed files."""
    outs = []
    for i, (tz, umask) in enumerate((("UTC", "022"), ("Pacific/Kiritimati", "077"))):
        out, cwd = tmp_path / f"out{i}", tmp_path / f"cwd{i}"
        cwd.mkdir()
        env = {**os.environ, "TZ": tz, "SOURCE_DATE_EPOCH": str(1000 * i), "PYTHONHASHSEED": str(i)}
        run = subprocess.run(["sh", "-c", f'umask {umask} && exec "$0" "$1" --out "$2"', sys.executable,
                              str(M4L / "build.py"), str(out)], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        outs.append({name: (out / name).read_bytes() for name in ("STAGE Bridge.amxd", "STAGE Bridge.maxpat")})
    assert outs[0] == outs[1]
    assert outs[0]["STAGE Bridge.amxd"] == AMXD.read_bytes() and outs[0]["STAGE Bridge.maxpat"] == MAXPAT.read_bytes()
