"""The end of a multi-process run: leave without the interpreter's finalization.

Gloo runs collectives on worker threads that drop their reference to a finished collective a moment after the
caller has moved on. When that last reference holds tensors, dropping it takes the GIL. If the main thread has
reached interpreter finalization by then, the worker thread is stopped by a forced unwind through C++ code that
may not throw: "terminate called without an active exception", SIGABRT, and the launcher reports a finished run
as failed (about 1 ZeRO-3 run in 4 on 2 CPU processes; pytorch/pytorch#190489). `destroy_process_group()` does
not stop those threads while DeepSpeed and accelerate still hold the groups. So a finished multi-process run
does what normal exit does up to finalization (join our threads, run atexit handlers such as wandb's, flush) and
then ends the process: every file was written and closed by then.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading


def leave_distributed(exit_code: int = 0) -> None:
    """Destroy the process group and end the process; returns only when this process is not part of one."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    multi = dist.get_world_size() > 1
    dist.destroy_process_group()
    if not multi:
        return
    for thread in threading.enumerate():  # as interpreter shutdown does: wait for non-daemon threads
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(exit_code)
