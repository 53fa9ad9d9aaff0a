"""A lock held by another process, for the tests of the run-folder and results-store locks."""

from __future__ import annotations

import os
import signal
import time
from contextlib import contextmanager


@contextmanager
def lock_held_by_child(lock):
    """Fork a child that enters ``with lock():`` and holds it; yield the child's pid once it holds it.

    On exit the child is killed with SIGKILL, as a crashed run would be: the operating system releases
    its lock, which is what the tests check next.
    """
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            with lock():
                os.write(write, b"x")
                time.sleep(60)
        finally:
            os._exit(0)
    try:
        assert os.read(read, 1) == b"x"
        yield pid
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(read)
        os.close(write)
