"""A real daemon against what the protocol does not stop on its own (issue 14, items 9 and 10):
its reply socket, a 60 KB job id, an inbox name too long for the take files."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from daemon_util import Rig, running_daemon, unique_id
from stage_bridge.bridge import protocol as P

pytestmark = pytest.mark.slow  # a whole daemon answering real OSC peers (oscsend/oscdump)


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    with running_daemon(tmp_path_factory.mktemp("limits") / "home", watch=True) as rig:
        yield rig


def ping(rig: Rig) -> None:
    token = unique_id("ping")
    mark = rig.dump.mark()
    rig.send(P.PING, "s", token)
    rig.dump.wait_for(lambda m: m.address == P.PONG and m.args == (token,), 10, since=mark)


def udp_sockets(pid: int) -> list[str]:
    """Local addresses (hex `ADDR:PORT` as /proc/net/udp lists them) of the UDP sockets `pid` holds."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if m := re.fullmatch(r"socket:\[(\d+)\]", target):
            inodes.add(m.group(1))
    found = []
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[9] in inodes:
                found.append(fields[1])
    return found


@pytest.mark.skipif(sys.platform != "linux", reason="reads the daemon's sockets from /proc")
def test_no_socket_of_the_daemon_listens_on_every_interface(rig):
    ping(rig)  # the reply socket has sent: an unbound one would now be bound to 0.0.0.0:<ephemeral>
    assert rig.daemon.proc is not None
    local = udp_sockets(rig.daemon.proc.pid)
    assert len(local) >= 2, local  # the OSC socket and the reply socket
    loopback = "0100007F"  # 127.0.0.1, as /proc/net/udp writes it
    assert all(address.split(":")[0] == loopback for address in local), local


def test_a_60_kb_job_id_gets_a_reply(rig):
    huge = "j" * 60_000
    for address, types, args in ((P.GENERATE, "sssisfss", [huge, "", "drums", 1, "bpm", 120.0, "context_mode",
                                                           "click"]),
                                 (P.CANCEL, "s", [huge])):
        mark = rig.dump.mark()
        rig.send(address, types, *args)
        err = rig.dump.wait_for(lambda m: m.address == P.ERROR and m.args[1] == "bad_job_id", 10, since=mark)
        assert len(err.args[0]) == P.MAX_ECHO_CHARS and err.args[0].startswith("jjj"), err
        assert len(err.args[2]) <= P.MAX_MESSAGE_CHARS
    ping(rig)  # and it goes on answering


def test_an_inbox_name_too_long_for_the_take_files_is_refused_before_generating(rig):
    """Refused when the inbox submits it (runner.admit), as every inbox refusal: logged with its
    code and reason, never queued, nothing written."""
    name = "x" * 230  # the file itself is fine (240 bytes); its takes' names would not be
    mark = rig.dump.mark()
    since = len(rig.daemon.log)
    (rig.home / "inbox" / f"{name}.json").write_text(json.dumps({"bpm": 120, "bars": 1}))
    noise = np.random.default_rng(0).standard_normal((44100 * 2, 2)).astype("float32") * 0.1
    sf.write(rig.home / "inbox" / f"{name}.drums.wav", noise, 44100)
    line = rig.daemon.wait_log(lambda x: "not started (bad_request)" in x and "xxx" in x, 60, since=since)
    assert "too long" in line, line
    assert not [m for m in rig.dump.snapshot(mark) if m.address in (P.ACCEPTED, P.PROGRESS)]
    assert not [p for p in (rig.home / "outbox").iterdir() if p.name.startswith("xxx")]
