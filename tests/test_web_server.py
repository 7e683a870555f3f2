"""The control room wired into the daemon's `Server`: on by default on loopback, its address in
/stage/info, beyond loopback only with --allow-remote and then with a token, a taken port leaves
the daemon running without the page. (No model: every instrument's weights are "missing".)"""

from __future__ import annotations

import dataclasses
import logging
import socket

import pytest

from stage_bridge.bridge import protocol as P
from stage_bridge.bridge.config import load_config
from stage_bridge.bridge.osc import on_info
from stage_bridge.bridge.server import Server
from stage_bridge.errors import StageError, WeightsMissing

MODELS = {"drums": WeightsMissing("no weights here")}


def config(tmp_path, **settings):
    base = {"home": tmp_path / "home", "osc_port": 0, "reply_port": 9, "web_port": 0, "midi": False}
    return load_config({**base, **settings}, env={}, config_file=tmp_path / "none.toml")


@pytest.fixture
def started():
    servers = []

    def start(cfg):
        server = Server(cfg, MODELS, "cpu")
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def info_reply(server) -> tuple:
    """What the server's own /stage/info handler answers (its OscContext, with `send` recording)."""
    sent: list[tuple] = []
    handler = next(iter(server.dispatcher.handlers_for_address(P.INFO)))
    ctx = dataclasses.replace(handler.callback.args[0], send=lambda *a: sent.append(a))
    on_info(ctx, P.INFO)
    return sent[0]


def test_the_page_is_on_by_default_on_loopback_and_info_tells_its_address(tmp_path, started):
    server = started(config(tmp_path))
    assert server.web is not None and server.web.url == f"http://127.0.0.1:{server.web.port}/"
    with socket.create_connection(("127.0.0.1", server.web.port), timeout=10):
        pass
    assert info_reply(server)[3] == server.web.url


def test_no_web_means_no_page_and_info_says_so(tmp_path, started):
    server = started(config(tmp_path, web=False))
    assert server.web is None
    assert info_reply(server)[3] == P.NO_WEB


def test_beyond_loopback_needs_allow_remote_and_then_gets_a_token(tmp_path, started):
    with pytest.raises(StageError, match="--allow-remote"):
        Server(config(tmp_path, web_host="0.0.0.0"), MODELS, "cpu")
    server = started(config(tmp_path, web_host="0.0.0.0", allow_remote=True))
    token = server.web.ctx.token
    assert token and len(token) >= 24 and server.web.url.endswith(f"/?token={token}")


def test_a_token_from_the_config_is_kept(tmp_path, started):
    server = started(config(tmp_path, web_token="my-own-token"))
    assert server.web.ctx.token == "my-own-token" and server.web.url.endswith("?token=my-own-token")


def test_a_taken_port_leaves_the_daemon_running_without_the_page(tmp_path, started, caplog):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        with caplog.at_level(logging.WARNING, logger="stage_bridge.server"):
            server = started(config(tmp_path, web_port=taken.getsockname()[1]))
    assert server.web is None
    assert "--web-port" in caplog.text and "runs without it" in caplog.text
