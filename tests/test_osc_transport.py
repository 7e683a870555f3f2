"""The daemon's UDP transport and replies with real sockets: where replies come from, and that
every refusal gets a reply that fits in a datagram however long what was sent (issue 14, 9-10)."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest
from pythonosc.osc_message import OscMessage

from stage_bridge.bridge import protocol as P
from stage_bridge.bridge.osc import OscContext, UdpTransport, build_dispatcher, dispatch
from stage_bridge.bridge.tempo import TempoSource
from stage_bridge.limits import MAX_JOB_ID_CHARS


@pytest.fixture
def peer():
    """The device's side: a socket replies are sent to."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(10)
        yield s


@pytest.fixture
def transport(peer):
    t = UdpTransport("127.0.0.1", 0, "127.0.0.1", peer.getsockname()[1])
    yield t
    t.close()


def receive(peer: socket.socket) -> OscMessage:
    data, _ = peer.recvfrom(65536)
    return OscMessage(data)


def test_replies_come_from_loopback_only(transport, peer):
    assert transport.reply_source[0] == "127.0.0.1"  # bound before the first reply
    transport.send(P.PONG, "t")
    data, (host, port) = peer.recvfrom(65536)
    msg = OscMessage(data)
    assert (msg.address, msg.params) == (P.PONG, ["t"])
    assert transport.reply_source == (host, port) and host == "127.0.0.1"  # not 0.0.0.0:<ephemeral>


def test_replies_to_localhost_are_sent_from_loopback(peer):
    t = UdpTransport("127.0.0.1", 0, "localhost", peer.getsockname()[1])
    try:
        t.send(P.PONG)
        assert receive(peer).address == P.PONG
        assert t.reply_source[0] == "127.0.0.1"
    finally:
        t.close()


class _Unreached:
    """The job service, which a refused message must never reach."""

    def submit(self, *args, **kwargs):
        raise AssertionError("a refused request reached the job service")

    cancel = submit


@pytest.fixture
def daemon_side(transport, tmp_path):
    """The OSC receive loop of the daemon on `transport` (no job service: every message below is
    refused before one would be needed)."""
    ctx = OscContext(service=_Unreached(), tempo=TempoSource(), send=transport.send,  # type: ignore[arg-type]
                     instruments=("drums",), models="drums=tiny-random", device="cpu", home=Path(tmp_path),
                     bounces=Path(tmp_path))
    dispatcher = build_dispatcher(ctx)
    stop = threading.Event()
    thread = threading.Thread(target=transport.serve,
                              args=(stop, lambda data, addr: dispatch(dispatcher, data, addr, transport.send)))
    thread.start()
    yield transport.address
    stop.set()
    thread.join(5)


@pytest.mark.parametrize("address,extra", [(P.GENERATE, ["", "drums", 1, "context_mode", "click", "bpm", 120.0]),
                                           (P.CANCEL, [])])
def test_a_60_kb_job_id_is_refused_with_a_reply_that_fits(daemon_side, peer, address, extra):
    huge = "x" * 60_000
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as device:
        device.sendto(P.message(address, huge, *extra), daemon_side)
    reply = receive(peer)
    assert reply.address == P.ERROR
    job_id, code, text = reply.params
    assert code == "bad_job_id"
    assert len(job_id) == P.MAX_ECHO_CHARS and huge.startswith(job_id[:-3]) and job_id.endswith("...")
    assert len(text) <= P.MAX_MESSAGE_CHARS and f"1-{MAX_JOB_ID_CHARS}" in text


def test_any_long_value_is_echoed_clipped(daemon_side, peer):
    """Not only ids: a refusal that quotes what it was sent (here a 60 KB instrument) still fits."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as device:
        device.sendto(P.message(P.GENERATE, "job-1", "", "g" * 60_000, 1), daemon_side)
    reply = receive(peer)
    assert reply.params[:2] == ["job-1", "bad_instrument"] and len(reply.params[2]) <= P.MAX_MESSAGE_CHARS


def test_the_longest_valid_id_is_still_valid():
    longest = "a" * MAX_JOB_ID_CHARS
    assert P.check_job_id(longest) == longest
    with pytest.raises(P.ProtocolError) as e:
        P.check_job_id(longest + "a")
    assert e.value.code == "bad_job_id"


def test_clip():
    assert P.clip("abc", 3) == "abc"
    assert P.clip("abcdef", 5) == "ab..."


def test_a_file_name_that_is_not_utf8_still_makes_a_reply():
    """Linux hands undecodable file-name bytes to Python as lone surrogates, which UTF-8 cannot
    carry: the reply escapes them instead of failing to build (and never being sent)."""
    name = b"/outbox/take\xff.wav".decode("utf-8", "surrogateescape")
    msg = OscMessage(P.message(P.DONE, "job-1", name))
    assert msg.params == ["job-1", "/outbox/take\\udcff.wav"]
