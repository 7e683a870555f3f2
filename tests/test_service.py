"""`stage-bridge service`: the login service on macOS (launchd), Linux (systemd) and Windows (Run key).

The service managers do not run here: a fake runner records every command and keeps the state the
real manager would (loaded, enabled, registry values), while the files are written for real into a
temporary HOME. The generated unit is checked by systemd's own parser, the plist by plistlib, the
Windows command line by the Microsoft C runtime's documented parsing rules.
"""

from __future__ import annotations

import os
import plistlib
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from pythonosc.osc_message import OscMessage

from conftest import require_tool
from stage_bridge.bridge import service as S
from stage_bridge.bridge.config import ServeConfig
from stage_bridge.bridge.protocol import PING, PONG, message
from stage_bridge.cli import main

WIN_PYTHON = r"C:\Users\Jo Smith\stage bridge\.venv\Scripts\pythonw.exe"
MAC_PYTHON = "/Users/jo/Music/stage bridge/.venv/bin/python"
UID = 501  # the first user account on a Mac


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir()}


class FakeManager:
    """Answers launchctl, systemctl --user and reg as the real ones do, from state kept here, and
    records every command. A command it does not know fails the test."""

    def __init__(self, home: Path, fail: str | None = None):
        self.home = home
        self.calls: list[list[str]] = []
        self.loaded = False  # launchd: the agent is bootstrapped; systemd: the unit is enabled
        self.registry: dict[str, str] = {}
        self.fail = fail  # a command word ("enable", "bootstrap", "add") that fails with an error

    def __call__(self, argv, *, wait: bool = True) -> S.Result:
        argv = list(argv)
        self.calls.append(argv if wait else ["<start>", *argv])
        if not wait:
            return S.Result(0)
        if self.fail in argv:
            return S.Result(1, f"{argv[0]}: simulated failure of {self.fail}")
        tool, rest = argv[0], argv[1:]
        if tool == "launchctl":
            return self._launchctl(rest)
        if tool == "systemctl":
            assert rest[0] == "--user", argv
            return self._systemctl(rest[1:])
        if tool == "reg":
            return self._reg(rest)
        raise AssertionError(f"unexpected command {argv}")

    def _launchctl(self, rest: list[str]) -> S.Result:
        uid_domain = f"gui/{UID}"
        if rest == ["print", f"{uid_domain}/{S.LABEL}"]:
            return S.Result(0 if self.loaded else 113, "" if self.loaded else "Could not find service")
        if rest[:2] == ["bootstrap", uid_domain]:
            assert Path(rest[2]).is_file(), "bootstrap of a plist that is not there"
            if self.loaded:  # launchctl refuses to load a loaded service twice
                return S.Result(5, "Bootstrap failed: 5: Input/output error")
            self.loaded = True
            return S.Result(0)
        if rest == ["bootout", f"{uid_domain}/{S.LABEL}"]:
            if not self.loaded:
                return S.Result(3, "Boot-out failed: 3: No such process")
            self.loaded = False
            return S.Result(0)
        raise AssertionError(f"unexpected launchctl {rest}")

    def _systemctl(self, rest: list[str]) -> S.Result:
        unit_file = self.home / ".config" / "systemd" / "user" / S.UNIT
        if rest == ["daemon-reload"]:
            return S.Result(0)
        if rest == ["is-enabled", S.UNIT]:
            if not unit_file.exists():
                return S.Result(1, f"Failed to get unit file state for {S.UNIT}: No such file or directory")
            return S.Result(0, "enabled") if self.loaded else S.Result(1, "disabled")
        if rest in (["enable", "--now", S.UNIT], ["enable", S.UNIT]):
            if not unit_file.exists():
                return S.Result(1, f"Failed to enable unit: Unit file {S.UNIT} does not exist.")
            self.loaded = True
            return S.Result(0)
        if rest == ["disable", "--now", S.UNIT]:
            self.loaded = False
            return S.Result(0)
        raise AssertionError(f"unexpected systemctl {rest}")

    def _reg(self, rest: list[str]) -> S.Result:
        if rest == ["query", S.RUN_KEY, "/v", S.RUN_VALUE]:
            if S.RUN_VALUE not in self.registry:
                return S.Result(1, "ERROR: The system was unable to find the specified registry key or value.")
            return S.Result(0, f"\n{S.RUN_KEY}\n    {S.RUN_VALUE}    REG_SZ    {self.registry[S.RUN_VALUE]}\n")
        if rest[:3] == ["add", S.RUN_KEY, "/v"] and rest[4:6] == ["/t", "REG_SZ"] and rest[6] == "/d" and rest[8:] == ["/f"]:
            self.registry[rest[3]] = rest[7]
            return S.Result(0, "The operation completed successfully.")
        if rest == ["delete", S.RUN_KEY, "/v", S.RUN_VALUE, "/f"]:
            if self.registry.pop(S.RUN_VALUE, None) is None:
                return S.Result(1, "ERROR: The system was unable to find the specified registry key or value.")
            return S.Result(0, "The operation completed successfully.")
        raise AssertionError(f"unexpected reg {rest}")


def host_for(platform: str, home: Path, python: str | None = None) -> S.Host:
    default = {"darwin": MAC_PYTHON, "linux": sys.executable, "win32": WIN_PYTHON}[platform]
    return S.Host(platform, home, python or default, UID, {})


@pytest.fixture
def home(tmp_path) -> Path:
    h = tmp_path / "home"
    h.mkdir()
    return h


@pytest.fixture
def cfg(tmp_path) -> ServeConfig:
    """Settings on free ports, so no daemon of this machine is mistaken for ours."""
    return ServeConfig(home=tmp_path / "daemon-home", osc_port=free_udp_port(), reply_port=free_udp_port())


# -- the generated definitions -------------------------------------------------------------------

def test_systemd_unit_passes_systemd_analyze_verify(tmp_path, home):
    """A Python under a folder with spaces, "%h" and "$": systemd must find that exact executable."""
    analyze = require_tool("systemd-analyze")
    odd = tmp_path / "my 100%h mix $HOME"  # %h is a specifier (the home folder) unless escaped
    odd.mkdir()
    (odd / "python").symlink_to(sys.executable)
    host = host_for("linux", home, str(odd / "python"))
    unit = S.Systemd(host, S.serve_argv(host), FakeManager(home))
    unit.write(unit.wanted())
    runtime = tmp_path / "runtime"  # systemd-analyze --user needs a runtime folder, not a running manager
    runtime.mkdir(mode=0o700)
    env = {**os.environ, "HOME": str(home), "XDG_RUNTIME_DIR": str(runtime)}

    def verify(path: Path) -> subprocess.CompletedProcess:
        return subprocess.run([analyze, "--user", "verify", str(path)], env=env, capture_output=True, text=True,
                              timeout=120)

    done = verify(unit.path)
    assert done.returncode == 0 and "not executable" not in done.stderr, done.stderr
    # The check can fail: the same line without systemd's escaping names a file that is not there.
    naive = tmp_path / "naive" / S.UNIT
    naive.parent.mkdir()
    naive.write_text(unit.wanted().replace(S.systemd_quote(str(odd / "python"), first=True), f'"{odd / "python"}"'))
    bad = verify(naive)
    assert bad.returncode != 0 and "not executable" in bad.stderr, bad.stderr


def test_systemd_unit_lines(home):
    argv = ["/opt/py thon/bin/python", "-m", "stage_bridge.cli", "serve", "--config", '/a "b"/100%/$x.toml']
    text = S.Systemd(host_for("linux", home), argv, FakeManager(home)).wanted()
    lines = text.splitlines()
    # systemd.service(5) "Command lines": quoted words, C escapes, %% and (in arguments) $$.
    assert ('ExecStart="/opt/py thon/bin/python" "-m" "stage_bridge.cli" "serve" "--config" '
            '"/a \\"b\\"/100%%/$$x.toml"') in lines
    assert {"Restart=on-failure", "RestartPreventExitStatus=2", "WantedBy=default.target"} <= set(lines)
    assert lines.index("[Service]") < lines.index("Restart=on-failure") < lines.index("[Install]")


def test_launchd_plist_parses_with_the_documented_keys(home):
    agent = S.Launchd(host_for("darwin", home), S.serve_argv(host_for("darwin", home)), FakeManager(home))
    job = plistlib.loads(agent.wanted().encode())
    assert job["Label"] == S.LABEL
    assert job["ProgramArguments"] == [MAC_PYTHON, "-m", "stage_bridge.cli", "serve"]
    assert job["RunAtLoad"] is True and job["KeepAlive"] == {"Crashed": True}
    assert job["ProcessType"] == "Interactive"  # not throttled like a background job
    log = home / "Library" / "Logs" / "stage-bridge" / "serve.log"
    assert job["StandardOutPath"] == job["StandardErrorPath"] == str(log)
    assert set(job) == {"Label", "ProgramArguments", "RunAtLoad", "KeepAlive", "ProcessType", "StandardOutPath",
                        "StandardErrorPath"}
    assert agent.path == home / "Library" / "LaunchAgents" / f"{S.LABEL}.plist"


def parse_windows_command_line(line: str) -> list[str]:
    """The Microsoft C runtime's rules, as documented ("Parsing C command-line arguments",
    learn.microsoft.com): arguments are separated by spaces or tabs; a double-quoted string is one
    argument whatever spaces it holds; 2n backslashes before a quote give n backslashes and the quote
    delimits; 2n+1 backslashes before a quote give n backslashes and a literal quote; backslashes not
    before a quote are literal."""
    args: list[str] = []
    i, n = 0, len(line)
    while True:
        while i < n and line[i] in " \t":
            i += 1
        if i >= n:
            return args
        arg, quoted = [], False
        while i < n and (quoted or line[i] not in " \t"):
            if line[i] == "\\":
                j = i
                while j < n and line[j] == "\\":
                    j += 1
                count = j - i
                if j < n and line[j] == '"':
                    arg.append("\\" * (count // 2))
                    if count % 2:
                        arg.append('"')
                    else:
                        quoted = not quoted
                    i = j + 1
                else:
                    arg.append("\\" * count)
                    i = j
            elif line[i] == '"':
                quoted = not quoted
                i += 1
            else:
                arg.append(line[i])
                i += 1
        args.append("".join(arg))


def test_the_parser_follows_the_documented_examples():
    """The table of "Parsing C command-line arguments" (so the round trip below can fail)."""
    assert parse_windows_command_line('"a b c" d e') == ["a b c", "d", "e"]
    assert parse_windows_command_line(r'"ab\"c" "\\" d') == ['ab"c', "\\", "d"]
    assert parse_windows_command_line(r'a\\\b d"e f"g h') == [r"a\\\b", "de fg", "h"]
    assert parse_windows_command_line(r'a\\\"b c d') == [r'a\"b', "c", "d"]
    assert parse_windows_command_line(r'a\\\\"b c" d e') == [r"a\\b c", "d", "e"]


def test_windows_command_line_quotes_paths_with_spaces_exactly(home):
    entry = S.RunKey(host_for("win32", home), S.serve_argv(host_for("win32", home)), FakeManager(home))
    assert entry.wanted() == r'"C:\Users\Jo Smith\stage bridge\.venv\Scripts\pythonw.exe" -m stage_bridge.cli serve'
    assert parse_windows_command_line(entry.wanted()) == [WIN_PYTHON, "-m", "stage_bridge.cli", "serve"]
    config = r"C:\Users\Jo Smith\My Music\stage bridge\config.toml"
    argv = [WIN_PYTHON, "-m", "stage_bridge.cli", "serve", "--config", config]
    assert parse_windows_command_line(S.windows_command_line(argv)) == argv
    # reg.exe gets the whole command line, quotes and all, as one /d argument
    reg = ["reg", "add", S.RUN_KEY, "/v", S.RUN_VALUE, "/t", "REG_SZ", "/d", entry.wanted(), "/f"]
    assert parse_windows_command_line(subprocess.list2cmdline(reg)) == reg


# -- install and uninstall -------------------------------------------------------------------------

PLIST = f"Library/LaunchAgents/{S.LABEL}.plist"
UNIT_FILE = f".config/systemd/user/{S.UNIT}"
SYSTEMCTL = ["systemctl", "--user"]
REG_QUERY = ["reg", "query", S.RUN_KEY, "/v", S.RUN_VALUE]
WIN_LINE = S.windows_command_line([WIN_PYTHON, "-m", "stage_bridge.cli", "serve"])

# platform: (files after install, commands of: first install, second install, first uninstall, second uninstall)
EXPECTED = {
    "darwin": ({PLIST}, [
        [["launchctl", "bootstrap", f"gui/{UID}", "{home}/" + PLIST]],
        [["launchctl", "print", f"gui/{UID}/{S.LABEL}"]],
        [["launchctl", "print", f"gui/{UID}/{S.LABEL}"], ["launchctl", "bootout", f"gui/{UID}/{S.LABEL}"]],
        [],
    ]),
    "linux": ({UNIT_FILE}, [
        [SYSTEMCTL + ["daemon-reload"], SYSTEMCTL + ["enable", "--now", S.UNIT]],
        [SYSTEMCTL + ["is-enabled", S.UNIT]],
        [SYSTEMCTL + ["is-enabled", S.UNIT], SYSTEMCTL + ["disable", "--now", S.UNIT], SYSTEMCTL + ["daemon-reload"]],
        [],
    ]),
    "win32": (set(), [
        [REG_QUERY, ["reg", "add", S.RUN_KEY, "/v", S.RUN_VALUE, "/t", "REG_SZ", "/d", WIN_LINE, "/f"],
         ["<start>", WIN_PYTHON, "-m", "stage_bridge.cli", "serve"]],
        [REG_QUERY],
        [REG_QUERY, ["reg", "delete", S.RUN_KEY, "/v", S.RUN_VALUE, "/f"]],
        [REG_QUERY],
    ]),
}


@pytest.mark.parametrize("platform", sorted(EXPECTED))
def test_install_and_uninstall_are_idempotent_and_touch_nothing_else(platform, home, cfg):
    files, commands = EXPECTED[platform]
    commands = [[[a.replace("{home}", str(home)) for a in c] for c in step] for step in commands]
    host, fake, said = host_for(platform, home), FakeManager(home), []
    (home / "Music").mkdir()
    (home / "Music" / "song.als").write_text("the musician's own file")
    before = files_under(home)

    steps = [lambda: S.install(host, cfg, fake, said.append), lambda: S.install(host, cfg, fake, said.append),
             lambda: S.uninstall(host, fake, said.append), lambda: S.uninstall(host, fake, said.append)]
    after = []
    for step, expected in zip(steps, commands):
        said.clear()
        fake.calls.clear()
        assert step() == 0
        assert fake.calls == expected
        after.append((files_under(home), list(said)))

    assert after[0][0] == before | files and after[1][0] == after[0][0]
    assert after[2][0] == after[3][0] == before
    assert (home / "Music" / "song.als").read_text() == "the musician's own file"
    first, again, removed, removed_again = (s for _, s in after)
    assert first[0].startswith("installed the ") and "started it now" in " ".join(first)
    assert first[-1] == "undo: stage-bridge service uninstall"
    assert again == [again[0]] and again[0].startswith("already installed") and "nothing changed" in again[0]
    assert removed[0].startswith("removed the ") and removed[-1] == "undo: stage-bridge service install"
    assert removed_again == [removed_again[0]] and "nothing changed" in removed_again[0]
    assert not fake.loaded and not fake.registry


@pytest.mark.parametrize("platform", sorted(EXPECTED))
def test_install_never_starts_a_second_daemon(platform, home, cfg):
    fake, said = FakeManager(home), []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as daemon:  # something holds the OSC port
        daemon.bind((cfg.osc_host, cfg.osc_port))
        assert S.install(host_for(platform, home), cfg, fake, said.append) == 0
    assert not any(c[0] == "<start>" or c[1:2] == ["bootstrap"] or "--now" in c for c in fake.calls), fake.calls
    assert "no second one was started" in "\n".join(said) and "next login" in "\n".join(said)


@pytest.mark.parametrize("platform", ["darwin", "linux"])
def test_install_with_another_python_replaces_the_loaded_service(platform, home, cfg):
    fake = FakeManager(home)
    S.install(host_for(platform, home, "/old/python"), cfg, fake, lambda _: None)
    fake.calls.clear()
    said = []
    assert S.install(host_for(platform, home, "/new/python"), cfg, fake, said.append) == 0
    assert said[0].endswith("(updated)") and fake.loaded
    stop = {"darwin": ["launchctl", "bootout", f"gui/{UID}/{S.LABEL}"], "linux": SYSTEMCTL + ["disable", "--now", S.UNIT]}
    start = {"darwin": ["launchctl", "bootstrap", f"gui/{UID}", f"{home}/{PLIST}"],
             "linux": SYSTEMCTL + ["enable", "--now", S.UNIT]}
    assert fake.calls.index(stop[platform]) < fake.calls.index(start[platform])
    path = home / (PLIST if platform == "darwin" else UNIT_FILE)
    assert "/new/python" in path.read_text() and "/old/python" not in path.read_text()


@pytest.mark.parametrize("platform, refused", [("darwin", "bootstrap"), ("linux", "enable"), ("win32", "add")])
def test_a_refusing_service_manager_leaves_nothing_installed(platform, refused, home, cfg):
    with pytest.raises(S.ServiceError, match=f"simulated failure of {refused}.*Nothing was installed"):
        S.install(host_for(platform, home), cfg, FakeManager(home, fail=refused), lambda _: None)
    assert files_under(home) == set()


def test_the_config_file_is_the_only_option_baked_in(home, tmp_path):
    assert S.serve_argv(host_for("linux", home)) == [sys.executable, "-m", "stage_bridge.cli", "serve"]
    config = tmp_path / "my settings.toml"
    assert S.serve_argv(host_for("linux", home), config)[-2:] == ["--config", str(config.resolve())]


def test_the_real_runner_reports_output_and_a_missing_tool_in_one_line():
    assert S.run_command([sys.executable, "-c", "import sys; print('out'); sys.exit(3)"]) == S.Result(3, "out")
    with pytest.raises(S.ServiceError, match=r"^no-such-service-manager-xyz was not found on this computer"):
        S.run_command(["no-such-service-manager-xyz", "--user"])


# -- status ------------------------------------------------------------------------------------------

class AnsweringDaemon:
    """A UDP peer on the daemon's port that answers one /stage/ping with /stage/pong to the reply port."""

    def __init__(self, cfg: ServeConfig):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((cfg.osc_host, cfg.osc_port))
        self.reply = (cfg.reply_host, cfg.reply_port)
        self.thread = threading.Thread(target=self._answer, daemon=True)

    def _answer(self) -> None:
        msg = OscMessage(self.sock.recv(65536))
        assert msg.address == PING
        self.sock.sendto(message(PONG, *msg.params[:1]), self.reply)

    def __enter__(self) -> "AnsweringDaemon":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.thread.join(30)
        self.sock.close()


def test_status_says_not_installed_and_not_running(home, cfg):
    said = []
    assert S.status(host_for("linux", home), cfg, FakeManager(home), said.append) == 0
    assert said[0].startswith("service: not installed") and str(home / UNIT_FILE) in said[0]
    assert said[1].startswith("daemon: not running") and f":{cfg.osc_port}" in said[1]


@pytest.mark.parametrize("platform", sorted(EXPECTED))
def test_status_says_installed_where_and_that_the_daemon_answers(platform, home, cfg):
    fake, said = FakeManager(home), []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as held:  # install without starting anything
        held.bind((cfg.osc_host, cfg.osc_port))
        S.install(host_for(platform, home), cfg, fake, lambda _: None)
    fake.loaded = True  # as at the next login
    with AnsweringDaemon(cfg):
        assert S.status(host_for(platform, home), cfg, fake, said.append, timeout=30.0) == 0
    where = {"darwin": str(home / PLIST), "linux": str(home / UNIT_FILE), "win32": f"{S.RUN_KEY}\\{S.RUN_VALUE}"}
    assert said[0] == f"service: installed, {S.service_for(host_for(platform, home), [], fake).kind} {where[platform]}"
    assert said[1] == f"daemon: running: answers on {cfg.osc_host}:{cfg.osc_port}"


def test_status_when_the_port_is_held_but_silent_or_the_replies_cannot_be_heard(home, cfg):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind((cfg.osc_host, cfg.osc_port))
        quiet = S.daemon_state(cfg, timeout=0.05)  # nothing will ever answer: the timeout only ends the wait
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as device:  # Live's device holds the reply port
            device.bind((cfg.reply_host, cfg.reply_port))
            deaf = S.daemon_state(cfg, timeout=0.05)
    assert "is taken but nothing answered /stage/ping" in quiet and "a second daemon would refuse" in quiet
    assert "cannot hear them" in deaf and f"{cfg.reply_port}" in deaf


@pytest.mark.slow
def test_status_hears_a_real_daemon(tmp_path, home):
    from daemon_util import Daemon

    reply_port = free_udp_port()
    daemon = Daemon(tmp_path / "daemon-home", reply_port=reply_port).start()
    try:
        cfg = ServeConfig(home=daemon.home, osc_port=daemon.osc_port, reply_port=reply_port)
        assert S.daemon_state(cfg, timeout=30.0) == f"running: answers on 127.0.0.1:{daemon.osc_port}"
    finally:
        assert daemon.stop() == 0


# -- the command line ---------------------------------------------------------------------------------

@pytest.fixture
def cli_home(monkeypatch, home):
    monkeypatch.setenv("HOME", str(home))
    for key in list(os.environ):
        if key.startswith(("STAGE_BRIDGE_", "XDG_")):
            monkeypatch.delenv(key)
    return home


def test_cli_unsupported_platform_is_one_error_line(monkeypatch, cli_home, capsys):
    monkeypatch.setattr(S.Host, "current", classmethod(lambda cls: S.Host("sunos5", cli_home, sys.executable, 1, {})))
    monkeypatch.setattr(S, "run_command", FakeManager(cli_home))
    assert main(["service", "install"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "sunos5" in err[0] and "stage-bridge serve" in err[0]
    assert files_under(cli_home) == set()


def test_cli_no_write_permission_is_one_error_line(monkeypatch, cli_home, capsys):
    (cli_home / ".config").mkdir()
    (cli_home / ".config" / "systemd").write_text("a file where the folder should be")  # mkdir fails, even as root
    fake = FakeManager(cli_home)
    monkeypatch.setattr(S.Host, "current", classmethod(lambda cls: host_for("linux", cli_home)))
    monkeypatch.setattr(S, "run_command", fake)
    assert main(["service", "install"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: cannot write ") and UNIT_FILE in err[0]
    assert fake.calls == []


def test_cli_install_status_uninstall(monkeypatch, cli_home, capsys):
    fake = FakeManager(cli_home)
    monkeypatch.setattr(S.Host, "current", classmethod(lambda cls: host_for("linux", cli_home)))
    monkeypatch.setattr(S, "run_command", fake)
    assert main(["service", "install"]) == 0
    assert (cli_home / UNIT_FILE).is_file() and fake.loaded
    assert main(["service", "status"]) == 0
    assert main(["service", "uninstall"]) == 0
    out = capsys.readouterr().out
    assert "installed the systemd user unit" in out and "service: installed, systemd user unit" in out
    assert "removed the systemd user unit" in out and not (cli_home / UNIT_FILE).exists()


@pytest.mark.parametrize("platform, note", [("darwin", "launchd loads it at your next login"),
                                            ("linux", "not enabled, so it does not start at login")])
def test_status_of_a_file_the_manager_does_not_have(platform, note, home, cfg):
    fake, said = FakeManager(home), []
    S.install(host_for(platform, home), cfg, fake, lambda _: None)
    fake.loaded = False  # e.g. `launchctl bootout` or `systemctl --user disable` by hand
    S.status(host_for(platform, home), cfg, fake, said.append)
    assert said[0].startswith("service: installed, ") and note in said[0]


def test_cli_install_bakes_in_the_named_config_file_only(monkeypatch, cli_home, tmp_path, capsys):
    fake = FakeManager(cli_home)
    monkeypatch.setattr(S.Host, "current", classmethod(lambda cls: host_for("linux", cli_home)))
    monkeypatch.setattr(S, "run_command", fake)
    config = tmp_path / "my settings.toml"
    assert main(["service", "install", "--config", str(config)]) == 2  # not there yet: refused, nothing written
    assert "no such file" in capsys.readouterr().err and files_under(cli_home) == set()
    config.write_text("osc_port = 9000\n")
    assert main(["service", "install", "--config", str(config)]) == 0
    assert f'"--config" "{config}"' in (cli_home / UNIT_FILE).read_text()
