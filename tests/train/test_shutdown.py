"""leave_distributed: a finished multi-process run ends after atexit handlers and flushed output, with exit code 0,
and a process outside a process group goes on."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from sftforge.train.shutdown import leave_distributed

SCRIPT = """
import atexit, sys, threading, time, torch, torch.distributed as dist
from sftforge.train.shutdown import leave_distributed
dist.init_process_group("gloo")
out = [torch.zeros(2) for _ in range(2)]
dist.all_gather(out, torch.ones(2) * dist.get_rank())  # leaves gloo's worker threads running
done = []
threading.Thread(target=lambda: (time.sleep(0.5), done.append(1))).start()  # non-daemon: must be joined
sys.stdout.write(f"unflushed {sys.argv[1]}")  # no newline, no flush: must still come out
atexit.register(lambda: print(" thread finished" if done else " thread NOT finished"))
leave_distributed(0)
print("NOT REACHED")
"""


def test_outside_a_process_group_it_returns():
    leave_distributed(0)  # no process group here: nothing to do, and the caller goes on


@pytest.mark.slow
def test_a_two_process_run_exits_cleanly_after_atexit_handlers(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port,
           "--tee", "3", str(script), "x"]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "NOT REACHED" not in proc.stdout
    assert proc.stdout.count("unflushed x") == 2
    assert proc.stdout.count("thread finished") == 2
