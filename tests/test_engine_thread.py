"""The daemon loads its models on a thread that ends (`daemon.on_own_thread`), so that the jobs'
worker is the only thread holding an OpenMP pool: the mechanism it relies on, and its use."""

from __future__ import annotations

import os
import threading

import pytest
import torch

from stage_bridge.bridge import daemon
from stage_bridge.errors import StageError

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads through /proc (Linux)")


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


def _settles_at(count: int) -> bool:
    """Whether the process comes down to `count` threads (or fewer: an earlier test's thread may
    end meanwhile): an ended thread's pooled OpenMP threads are told to exit as it ends and
    leave a moment later."""
    import time

    deadline = time.monotonic() + 30.0
    while _threads() > count and time.monotonic() < deadline:
        time.sleep(0.01)
    return _threads() <= count


def _parallel_region() -> None:
    """A product big enough that PyTorch splits it over its threads (an OpenMP parallel region)."""
    a = torch.ones(512, 512)
    (a @ a).sum()


@pytest.mark.skipif(torch.get_num_threads() < 2 or "OpenMP" not in torch.__config__.parallel_info(),
                    reason="needs PyTorch's OpenMP backend with 2 threads or more")
def test_an_openmp_pool_lives_as_long_as_its_thread():
    """What `on_own_thread` relies on: a thread that ran a parallel region keeps a pool of OpenMP
    threads while it lives, and the pool ends with it. (If libgomp ever pools otherwise, this
    fails, and `on_own_thread`'s reason must be measured again.)"""
    before = _threads()
    ran, release = threading.Event(), threading.Event()

    def holder() -> None:
        _parallel_region()
        ran.set()
        release.wait()

    t = threading.Thread(target=holder)
    t.start()
    ran.wait()
    alive = _threads()
    release.set()
    t.join()
    assert alive >= before + 2  # the thread itself and at least one pooled OpenMP thread
    assert _settles_at(before)  # gone with it

    daemon.on_own_thread(_parallel_region)
    assert _settles_at(before)


def test_on_own_thread_returns_the_result_or_raises_the_error_of_another_thread():
    seen = []

    def work() -> int:
        seen.append(threading.current_thread())
        return 42

    assert daemon.on_own_thread(work) == 42
    assert seen[0] is not threading.current_thread() and not seen[0].is_alive()

    class Missing(StageError):
        pass

    with pytest.raises(Missing, match="no weights"):
        daemon.on_own_thread(lambda: (_ for _ in ()).throw(Missing("no weights")))


def test_the_daemon_loads_its_models_off_the_main_thread(monkeypatch, tmp_path):
    from stage_bridge.bridge.config import ServeConfig

    seen = []

    class Stop(Exception):
        pass

    def load_models(cfg):
        seen.append(threading.current_thread())
        raise Stop

    monkeypatch.setattr(daemon, "load_models", load_models)
    with pytest.raises(Stop):
        daemon.run_daemon(ServeConfig(home=tmp_path, midi=False, watch=False, web=False))
    assert seen and seen[0] is not threading.main_thread() and not seen[0].is_alive()


def test_ctrl_c_while_loading_waits_for_the_load_then_stops(capsys):
    """Ctrl+C cannot cut the loading thread's C++ work short (the interpreter's exit would abort
    the process): the first one waits for the work to end, then stops as before."""
    import signal

    started, release, finished = threading.Event(), threading.Event(), []

    def work() -> None:
        started.set()
        release.wait()
        finished.append(True)

    # Python's own Ctrl+C handler, whatever this process inherited: a shell that starts it in the
    # background ignores SIGINT, and Python then installs no handler (the signal would be lost)
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    handler = signal.getsignal(signal.SIGINT)
    main = threading.main_thread().ident

    def interrupt() -> None:
        started.wait()
        signal.pthread_kill(main, signal.SIGINT)  # to the main thread, which then waits for the work
        while signal.getsignal(signal.SIGINT) is handler:  # until it has taken the first Ctrl+C
            release.wait(0.001)
        release.set()

    threading.Thread(target=interrupt).start()
    try:
        with pytest.raises(KeyboardInterrupt):
            daemon.on_own_thread(work)
        assert finished == [True]  # the work ended before the interrupt went on
        assert signal.getsignal(signal.SIGINT) is handler
    finally:
        signal.signal(signal.SIGINT, inherited)
    assert "Ctrl+C again stops at once" in capsys.readouterr().err


def test_a_second_ctrl_c_while_loading_stops_at_once():
    import signal
    import subprocess
    import sys

    child = subprocess.Popen(
        [sys.executable, "-c",
         "import signal, threading\n"
         "signal.signal(signal.SIGINT, signal.default_int_handler)\n"  # as from a terminal, not a background shell
         "from stage_bridge.bridge.daemon import on_own_thread\n"
         "def work():\n"
         "    print('loading', flush=True)\n"
         "    threading.Event().wait()\n"  # a load that never ends
         "on_own_thread(work)\n"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    guard = threading.Timer(120.0, child.kill)  # a safety net: a child that never answers must not hang the suite
    guard.start()
    try:
        assert child.stdout.readline().strip() == "loading"
        child.send_signal(signal.SIGINT)
        assert "Ctrl+C again stops at once" in child.stderr.readline()
        child.send_signal(signal.SIGINT)
        assert child.wait(timeout=60) == 130
    finally:
        guard.cancel()
        child.kill()
        child.wait()
