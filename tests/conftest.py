"""Test-session settings shared by every test module."""

import os

import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    # xdist runs one worker per core; intra-op threads on top of that oversubscribe the CPU (about 10x
    # slower on 2 cores), so each worker uses a single thread.
    torch.set_num_threads(1)
