"""Running the distributed test scripts in fresh processes (the tests' side)."""
import json
import os
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


def run(command, cwd, timeout=120, env=None):
    """Run ``command`` (a list); returns (returncode, combined output, seconds)."""
    start = time.monotonic()
    proc = subprocess.run(command, cwd=cwd, env=env or clean_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=timeout)
    return proc.returncode, proc.stdout, time.monotonic() - start


def run_script(name, *args, cwd, timeout=120, env=None):
    return run([sys.executable, os.path.join(SCRIPTS, name), *map(str, args)], cwd, timeout, env)


def load_ranks(outdir, world=2, prefix="rank"):
    return [json.load(open(os.path.join(outdir, f"{prefix}{r}.json"))) for r in range(world)]


def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
