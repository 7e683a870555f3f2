"""`stage-bridge service install|uninstall|status`: the daemon as a per-user login service.

Why: a musician should never need a terminal after installing. The service runs the same
Python that is installed (`python -m stage_bridge.cli serve`), reads the user's config file
like a hand-started daemon, and starts at login:

- macOS: a launchd agent, ~/Library/LaunchAgents/<LABEL>.plist, loaded with `launchctl bootstrap`.
- Linux: a systemd user unit, ~/.config/systemd/user/stage-bridge.service, `systemctl --user enable`.
- Windows: a value under the per-user Run key (HKCU\\...\\CurrentVersion\\Run), the documented
  per-user "run at logon" entry. Chosen over `schtasks /SC ONLOGON` (an any-user logon trigger,
  which needs an administrator: learn.microsoft.com, "schtasks create", /sc ONLOGON "whenever a
  user (any user) logs on") and over a .cmd in the Startup folder (its console window stays open,
  and closing it stops the daemon). The command runs pythonw.exe: no console window at all.

Every external command goes through one `Runner` (`run_command` is the real one), so tests record
the commands instead of running launchctl/systemctl/reg. Install and uninstall are idempotent and
touch only their own file (or registry value) and the service manager. A second daemon is never
started: when the daemon's OSC port is taken, install registers the service for the next login
only (a second `serve` would refuse the busy port anyway, with "is another stage-bridge running?").
"""

from __future__ import annotations

import os
import plistlib
import shlex
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Protocol, Sequence

from ..errors import BadArgument, OutputNotWritable, StageError
from .config import ServeConfig

LABEL = "org.stage-bridge.serve"  # launchd job label (reverse-DNS, launchd.plist(5) "Label")
UNIT = "stage-bridge.service"
RUN_KEY = r"HKCU\Software\Microsoft\Windows\CurrentVersion\Run"
RUN_VALUE = "stage-bridge"
SERVE = ("-m", "stage_bridge.cli", "serve")
PING_TIMEOUT_S = 1.0


class ServiceError(StageError):
    """The service manager (launchctl, systemctl, reg) is missing or refused a command."""

    code = "service_failed"


# -- running external commands ---------------------------------------------------------------------

@dataclass(frozen=True)
class Result:
    returncode: int
    output: str = ""  # stdout and stderr together, stripped


class Runner(Protocol):
    def __call__(self, argv: Sequence[str], *, wait: bool = True) -> Result: ...


def run_command(argv: Sequence[str], *, wait: bool = True) -> Result:
    """Run one command and return its status and output; `wait=False` starts it detached
    (the daemon on Windows) and returns at once."""
    try:
        if not wait:
            detached = {"creationflags": subprocess.DETACHED_PROCESS | subprocess.CREATE_NEW_PROCESS_GROUP} \
                if os.name == "nt" else {"start_new_session": True}
            subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, close_fds=True, **detached)
            return Result(0)
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise ServiceError(f"{argv[0]} was not found on this computer, so the login service cannot be set up; "
                           "start the daemon with `stage-bridge serve` instead.") from None
    except subprocess.TimeoutExpired:
        raise ServiceError(f"`{' '.join(argv)}` did not finish within a minute; try again.") from None
    return Result(done.returncode, (done.stdout + done.stderr).strip())


def _check(run: Runner, argv: Sequence[str]) -> Result:
    """Run a command that must succeed; its own words become the error line otherwise."""
    result = run(argv)
    if result.returncode != 0:
        said = " ".join(result.output.split()) or f"exit status {result.returncode}"
        raise ServiceError(f"`{' '.join(argv)}` failed: {said}")
    return result


# -- where and for whom --------------------------------------------------------------------------

@dataclass(frozen=True)
class Host:
    """The computer the service is for: platform, the user's home and id, the Python to run."""

    platform: str  # sys.platform: "darwin", "linux", "win32"
    home: Path
    python: str  # the interpreter the service starts (pythonw.exe on Windows)
    uid: int | None = None
    env: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def current(cls) -> "Host":
        python = Path(sys.executable)
        if os.name == "nt" and python.with_name("pythonw.exe").exists():
            python = python.with_name("pythonw.exe")  # a GUI-subsystem Python: no console window
        return cls(sys.platform, Path.home(), str(python), os.getuid() if hasattr(os, "getuid") else None,
                   dict(os.environ))


def serve_argv(host: Host, config_file: Path | None = None) -> list[str]:
    """The daemon's command line: the installed Python, and the config file only when one was named."""
    argv = [host.python, *SERVE]
    if config_file is not None:
        argv += ["--config", str(Path(config_file).expanduser().resolve())]
    return argv


# -- the three service managers ------------------------------------------------------------------

class Service(Protocol):
    kind: str  # in plain words, e.g. "systemd user unit"
    where: str  # the file (or registry value) that is the service
    command: str  # the daemon's command line, as this platform's shell would take it
    off_note: str  # what it means when the file is there but the manager does not have it

    def wanted(self) -> str: ...
    def current(self) -> str | None: ...
    def write(self, text: str) -> None: ...
    def erase(self) -> None: ...
    def registered(self) -> bool: ...
    def register(self, start: bool) -> list[str]: ...
    def unregister(self) -> list[str]: ...
    def forget(self) -> list[str]: ...  # after the definition is gone; notes for the musician


class _ServiceFile:
    """A service defined by one file in the user's home."""

    path: Path
    argv: list[str]

    @property
    def where(self) -> str:
        return str(self.path)

    @property
    def command(self) -> str:
        return shlex.join(self.argv)

    def current(self) -> str | None:
        try:
            return self.path.read_text(encoding="utf-8")
        except (FileNotFoundError, NotADirectoryError):  # not there (a file where a folder should be: neither)
            return None
        except (OSError, UnicodeDecodeError) as e:
            raise OutputNotWritable(f"cannot read {self.path} ({getattr(e, 'strerror', None) or e}); "
                                    "check its permissions.") from None

    def write(self, text: str) -> None:
        from ..atomic import write_atomic

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self.path, lambda f: f.write(text.encode("utf-8")), replace=True)
        except (OSError, OutputNotWritable) as e:
            reason = getattr(e, "strerror", None) or "not writable"
            raise OutputNotWritable(f"cannot write {self.path} ({reason}); make sure you own "
                                    f"{self.path.parent} and can write there, then try again.") from None

    def erase(self) -> None:
        try:
            self.path.unlink(missing_ok=True)
        except OSError as e:
            raise OutputNotWritable(f"cannot remove {self.path} ({e.strerror}); check its permissions.") from None


class Launchd(_ServiceFile):
    """A per-user launchd agent (launchd.plist(5), launchctl(1))."""

    kind = "launchd agent"
    off_note = "not loaded now: launchd loads it at your next login, or `stage-bridge service install` now"

    def __init__(self, host: Host, argv: list[str], run: Runner):
        self.host, self.argv, self.run = host, argv, run
        self.path = host.home / "Library" / "LaunchAgents" / f"{LABEL}.plist"
        # ~/Library/Logs is where per-user logs go on macOS (Console.app lists it).
        self.log = host.home / "Library" / "Logs" / "stage-bridge" / "serve.log"
        self.domain = f"gui/{host.uid}"  # launchctl(1): gui/<uid>, the logged-in user's GUI session

    def wanted(self) -> str:
        job = {
            "Label": LABEL,  # launchd.plist(5): "uniquely identifies the job to launchd"
            "ProgramArguments": self.argv,  # passed to execvp(3): no shell, no quoting needed
            "RunAtLoad": True,  # launchd.plist(5): start the job as soon as it is loaded (at login)
            # launchd.plist(5) KeepAlive/Crashed: restarted only when it "exited due to a signal which
            # is typically associated with a crash"; a clean stop or a refusal (busy port: exit 2) is final.
            "KeepAlive": {"Crashed": True},
            # launchd.plist(5) ProcessType: "If left unspecified, the system will apply light resource limits
            # to the job, throttling its CPU usage and I/O bandwidth"; Interactive jobs get none, as apps do.
            # A generation is work the musician asked for and waits on, in time with the song.
            "ProcessType": "Interactive",
            "StandardOutPath": str(self.log),  # launchd.plist(5): stdout/stderr go to this file
            "StandardErrorPath": str(self.log),
        }
        return plistlib.dumps(job).decode("utf-8")

    def write(self, text: str) -> None:
        try:  # launchd opens the log itself and cannot create its folder
            self.log.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputNotWritable(f"cannot create {self.log.parent} ({e.strerror}); check its permissions.") from None
        super().write(text)

    def registered(self) -> bool:
        # launchctl(1) "print <service-target>": fails when the service is not loaded.
        return self.run(["launchctl", "print", f"{self.domain}/{LABEL}"]).returncode == 0

    def register(self, start: bool) -> list[str]:
        if not start:  # ~/Library/LaunchAgents is loaded at every login: it starts then
            return ["it will start at your next login"]
        # launchctl(1) "bootstrap <domain-target> <service-path>": load it now; RunAtLoad starts it.
        _check(self.run, ["launchctl", "bootstrap", self.domain, str(self.path)])
        return ["started it now; it starts again at every login", f"its log: {self.log}"]

    def unregister(self) -> list[str]:
        # launchctl(1) "bootout <service-target>": stop and unload it.
        _check(self.run, ["launchctl", "bootout", f"{self.domain}/{LABEL}"])
        return ["stopped the daemon it had started"]

    def forget(self) -> list[str]:
        return [f"its log stays in {self.log.parent}"]


def systemd_quote(arg: str, first: bool = False) -> str:
    """One word of an ExecStart= line (systemd.service(5), "Command lines"): double quotes keep
    spaces, C-style escapes apply inside them (\\\\ and \\"), "%%" is a literal "%" (systemd.unit(5),
    specifiers), and "$$" a literal "$" in arguments; the executable itself is never
    variable-expanded, so its "$" stays as is."""
    text = arg.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    if not first:
        text = text.replace("$", "$$")
    return f'"{text}"'


class Systemd(_ServiceFile):
    """A systemd user unit (systemd.unit(5), systemd.service(5), systemctl(1) --user)."""

    kind = "systemd user unit"
    off_note = "but not enabled, so it does not start at login: `stage-bridge service install` enables it"

    def __init__(self, host: Host, argv: list[str], run: Runner):
        self.host, self.argv, self.run = host, argv, run
        # systemd.unit(5), user unit search path: $XDG_CONFIG_HOME/systemd/user or ~/.config/systemd/user
        config = Path(host.env.get("XDG_CONFIG_HOME") or host.home / ".config")
        self.path = config / "systemd" / "user" / UNIT

    def wanted(self) -> str:
        exec_start = " ".join(systemd_quote(a, first=(i == 0)) for i, a in enumerate(self.argv))
        return "\n".join([
            "[Unit]",
            "Description=stage-bridge daemon: generates drum and bass stems for your DAW",
            "",
            "[Service]",
            f"ExecStart={exec_start}",
            # systemd.service(5) Restart=on-failure: restart after a crash or an unclean exit ...
            "Restart=on-failure",
            # ... but not after exit status 2, a refusal the musician must fix (busy port, bad config):
            # RestartPreventExitStatus= "will prevent automatic service restarts".
            "RestartPreventExitStatus=2",
            "",
            "[Install]",
            # systemd.special(7): default.target is the user manager's main target, reached at login.
            "WantedBy=default.target",
            "",
        ])

    def _systemctl(self, *args: str) -> list[str]:
        return ["systemctl", "--user", *args]

    def registered(self) -> bool:
        # systemctl(1) is-enabled: prints "enabled" (exit 0) when the [Install] links exist.
        result = self.run(self._systemctl("is-enabled", UNIT))
        return result.returncode == 0 and result.output.split()[:1] == ["enabled"]

    def register(self, start: bool) -> list[str]:
        _check(self.run, self._systemctl("daemon-reload"))  # systemctl(1): reread changed unit files
        # systemctl(1) enable [--now]: link it into default.target, and start it now too.
        _check(self.run, self._systemctl("enable", *(["--now"] if start else []), UNIT))
        logs = f"its log: journalctl --user -u {UNIT}"
        return ["started it now; it starts again at every login", logs] if start else \
            ["it will start at your next login", logs]

    def unregister(self) -> list[str]:
        _check(self.run, self._systemctl("disable", "--now", UNIT))  # systemctl(1): unlink and stop
        return ["stopped the daemon it had started"]

    def forget(self) -> list[str]:
        _check(self.run, self._systemctl("daemon-reload"))  # systemctl(1): forget the removed unit file
        return []

def windows_command_line(argv: Sequence[str]) -> str:
    """One Windows command line: quoted by the Microsoft C runtime's rules ("Parsing C command-line
    arguments": spaces inside double quotes, \\" for a literal quote, backslashes literal unless
    they precede a quote), which subprocess.list2cmdline implements."""
    return subprocess.list2cmdline(list(argv))


class RunKey:
    """A value under HKCU\\...\\Run: "Run keys cause programs to automatically run each time that
    a user logs on ... The data value for a value is a command line" (Microsoft KB 314866, "Run
    and RunOnce Registry Keys"). Per-user: no administrator needed."""

    kind = "Windows logon entry"
    off_note = ""  # the value is the registration
    where = f"{RUN_KEY}\\{RUN_VALUE}"

    def __init__(self, host: Host, argv: list[str], run: Runner):
        self.host, self.argv, self.run = host, argv, run

    @property
    def command(self) -> str:
        return windows_command_line(self.argv)

    def wanted(self) -> str:
        return self.command

    def current(self) -> str | None:
        # reg query <key> /v <name>: exit 1 when absent; else a line "<name>  REG_SZ  <data>".
        result = self.run(["reg", "query", RUN_KEY, "/v", RUN_VALUE])
        if result.returncode != 0:
            return None
        for line in result.output.splitlines():
            name, sep, data = line.strip().partition("REG_SZ")
            if sep and name.strip() == RUN_VALUE:
                return data.strip()
        return None

    def write(self, text: str) -> None:
        # reg add <key> /v <name> /t REG_SZ /d <data> /f: /f overwrites without asking.
        _check(self.run, ["reg", "add", RUN_KEY, "/v", RUN_VALUE, "/t", "REG_SZ", "/d", text, "/f"])

    def erase(self) -> None:
        _check(self.run, ["reg", "delete", RUN_KEY, "/v", RUN_VALUE, "/f"])

    def registered(self) -> bool:
        return True  # the value is the registration: Windows reads it at every logon

    def register(self, start: bool) -> list[str]:
        if not start:
            return ["it will start at your next login"]
        self.run(self.argv, wait=False)  # the Run key acts at logon only: start this session's daemon now
        return ["started it now; it starts again at every login"]

    def unregister(self) -> list[str]:
        return []  # nothing is loaded: Windows reads the value at each logon

    def forget(self) -> list[str]:
        return ["a daemon running now keeps running until you log out"]


def service_for(host: Host, argv: list[str], run: Runner) -> Service:
    if host.platform == "darwin":
        return Launchd(host, argv, run)
    if host.platform.startswith("linux"):
        return Systemd(host, argv, run)
    if host.platform in ("win32", "cygwin"):
        return RunKey(host, argv, run)
    raise BadArgument(f"`stage-bridge service` knows macOS, Linux (systemd) and Windows, not '{host.platform}'; "
                      "start the daemon with `stage-bridge serve` (e.g. from your desktop's autostart) instead.")


# -- is a daemon there? ------------------------------------------------------------------------

def _ask_host(host: str) -> str:
    """Where to send to reach a daemon listening on `host` (a wildcard address means this computer)."""
    return {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)


def port_taken(host: str, port: int) -> bool:
    """Whether some program holds the daemon's OSC port: bind it for an instant and let go."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def daemon_state(cfg: ServeConfig, timeout: float = PING_TIMEOUT_S) -> str:
    """One line on the daemon: answers an OSC /stage/ping, holds its port silently, or is not there.

    The port is checked first, so a stopped daemon is reported at once (no waiting). The pong goes
    to the reply port (the protocol's one reply address), which must therefore be free for us to
    listen on; the Max for Live device holds it while Live is open.
    """
    from pythonosc.osc_message import OscMessage

    from .protocol import PING, PONG, message

    where = f"{cfg.osc_host}:{cfg.osc_port}"
    if not port_taken(cfg.osc_host, cfg.osc_port):
        return f"not running (nothing listens on {where}; a daemon that was just started may still be loading its models)"
    token = f"status-{uuid.uuid4().hex[:8]}"
    with socket.socket(socket.AF_INET6 if ":" in cfg.reply_host else socket.AF_INET, socket.SOCK_DGRAM) as replies:
        try:
            replies.bind((cfg.reply_host, cfg.reply_port))
        except OSError:
            return (f"port {where} is taken, by the daemon or another program; its answers go to "
                    f"{cfg.reply_host}:{cfg.reply_port}, which another program (the Max for Live device, "
                    "while Live is open) holds, so this check cannot hear them")
        with socket.socket(replies.family, socket.SOCK_DGRAM) as ask:
            ask.sendto(message(PING, token), (_ask_host(cfg.osc_host), cfg.osc_port))
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            replies.settimeout(left)
            try:
                data = replies.recv(65536)
            except socket.timeout:
                break
            try:
                msg = OscMessage(data)
            except Exception:  # not OSC: someone else's datagram
                continue
            if msg.address == PONG and list(msg.params[:1]) == [token]:
                return f"running: answers on {where}"
    return (f"port {where} is taken but nothing answered /stage/ping within {timeout:g} s (another program, "
            "or a daemon still starting); a second daemon would refuse that port")


# -- the commands ----------------------------------------------------------------------------------

Say = Callable[[str], None]


def install(host: Host, cfg: ServeConfig, run: Runner, say: Say, config_file: Path | None = None) -> int:
    """Write the service and register it; again with the same settings: nothing changes."""
    service = service_for(host, serve_argv(host, config_file), run)
    wanted, current = service.wanted(), service.current()
    registered = current is not None and service.registered()
    if current == wanted and registered:
        say(f"already installed: {service.kind} {service.where}; nothing changed.")
        return 0
    done = service.unregister() if registered else []  # an older definition is loaded: stop it first
    busy = port_taken(cfg.osc_host, cfg.osc_port)
    try:
        service.write(wanted)
        done += service.register(start=not busy)
    except ServiceError as e:  # the manager refused: put back what was there, nothing half-installed
        try:
            service.erase() if current is None else service.write(current)
        except StageError:
            pass  # the first failure is the one to report
        raise ServiceError(f"{e}. Nothing was installed; start the daemon with `stage-bridge serve` instead.") from None
    say(f"installed the {service.kind} {service.where}" + ("" if current is None else " (updated)"))
    say(f"  it runs: {service.command}")
    if busy:
        say(f"  a daemon (or another program) already uses port {cfg.osc_host}:{cfg.osc_port}, so no second one was started")
    for line in done:
        say(f"  {line}")
    hidden = sorted(k for k in host.env if k.startswith("STAGE_BRIDGE_") and k != "STAGE_BRIDGE_CONFIG")
    if hidden:
        say(f"  note: the service does not see {', '.join(hidden)} from this terminal; put those settings "
            "in the config file (`stage-bridge doctor` shows where)")
    say("undo: stage-bridge service uninstall")
    return 0


def uninstall(host: Host, run: Runner, say: Say) -> int:
    """Unregister and remove the service; when there is none: nothing changes."""
    service = service_for(host, [host.python, *SERVE], run)
    current = service.current()
    if current is None:
        say(f"not installed ({service.kind} {service.where} does not exist); nothing changed.")
        return 0
    done = service.unregister() if service.registered() else []
    service.erase()
    done += service.forget()
    say(f"removed the {service.kind} {service.where}")
    for line in done:
        say(f"  {line}")
    say("undo: stage-bridge service install")
    return 0


def status(host: Host, cfg: ServeConfig, run: Runner, say: Say, timeout: float = PING_TIMEOUT_S) -> int:
    """Installed or not, where, and whether a daemon answers."""
    service = service_for(host, [host.python, *SERVE], run)
    current = service.current()
    if current is None:
        say(f"service: not installed ({service.kind} would be {service.where}; `stage-bridge service install` adds it)")
    else:
        loaded = service.registered()
        say(f"service: installed, {service.kind} {service.where}" + ("" if loaded else f" ({service.off_note})"))
    say(f"daemon: {daemon_state(cfg, timeout)}")
    return 0
