#!/usr/bin/env python3
"""Kept for molecule's create, destroy and verify playbooks, which run the host services'
command line by path. The code is the package tests.support.hostsvc: this runs it as
``python -m tests.support.hostsvc``, the way to run it by hand from the repository root."""

import os
import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[2])
env = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])),
}
os.execve(sys.executable, [sys.executable, "-m", "tests.support.hostsvc", *sys.argv[1:]], env)
