"""Running the distributed test scripts in fresh processes (the tests' side)."""
import json
import os
import signal
import subprocess
import sys
import time

SCRIPTS = os.path.dirname(os.path.abspath(__file__))
_JOB_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "NODE_RANK", "GROUP_RANK", "MASTER_ADDR",
             "MASTER_PORT", "TORCHELASTIC_RUN_ID", "SLURM_NTASKS", "SLURM_PROCID", "FEATHERLIGHT_LAUNCHER_PID",
             "PL_GLOBAL_SEED")


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in _JOB_VARS}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **extra)
    return env


def start(command, cwd, log_path, env=None):
    """Start ``command`` in its own session (so everything it starts can be killed together), output to a file:
    a file never fills up and blocks the job the way an unread pipe can."""
    log = open(log_path, "w+")
    proc = subprocess.Popen(command, cwd=cwd, env=env or clean_env(), stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    proc.log = log
    return proc


def finish(procs, timeout):
    """Wait for ``procs``; kill the process groups of those still running after ``timeout`` seconds.
    Returns (timed_out, [outputs])."""
    deadline = time.monotonic() + timeout
    timed_out = False
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            timed_out = True
    # the job is over when every process it started is gone, not just the first one
    while any(_group_alive(p.pid) for p in procs) and time.monotonic() < deadline:
        time.sleep(0.05)
    for proc in procs:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # leftovers (workers of a failed job), if any
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait()
    outputs = []
    for proc in procs:
        proc.log.seek(0)
        outputs.append(proc.log.read())
        proc.log.close()
    return timed_out, outputs


def _group_alive(pgid):
    """Whether a live (not zombie) process of process group ``pgid`` exists (Linux /proc)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            return True
    return False


def run(command, cwd, timeout=120, env=None):
    """Run ``command`` (a list); returns (returncode, combined output, seconds). A timeout fails with the output."""
    begin = time.monotonic()
    proc = start(command, cwd, os.path.join(cwd, f"run-{time.monotonic_ns()}.log"), env)
    timed_out, (output,) = finish([proc], timeout)
    assert not timed_out, f"timed out after {timeout} s:\n{output[-6000:]}"
    return proc.returncode, output, time.monotonic() - begin


def run_script(name, *args, cwd, timeout=120, env=None):
    return run([sys.executable, os.path.join(SCRIPTS, name), *map(str, args)], cwd, timeout, env)


def load_ranks(outdir, world=2, prefix="rank"):
    return [json.load(open(os.path.join(outdir, f"{prefix}{r}.json"))) for r in range(world)]


def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
