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
    assert _threads() == before  # gone with it

    daemon.on_own_thread(_parallel_region)
    assert _threads() == before


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
