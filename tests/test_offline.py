"""The course runs with the network switched off: every process of the test suite refuses connections that would
leave the machine (tests/offline/sitecustomize.py), and no setting such as HF_HUB_OFFLINE is needed for that."""
from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

OUTSIDE = ("192.0.2.1", 80)  # TEST-NET-1: an address outside this machine (never routed anywhere)
PROBE = ("import socket\n"
         "try:\n"
         "    socket.create_connection(('192.0.2.1', 80), timeout=2)\n"
         "except OSError as e:\n"
         "    print(type(e).__name__, e)\n")


def test_the_test_process_cannot_reach_the_network():
    with pytest.raises(ConnectionRefusedError, match="refused: the course runs offline"):
        socket.create_connection(OUTSIDE, timeout=2)
    with pytest.raises(ConnectionRefusedError, match="refused: the course runs offline"):
        socket.getaddrinfo("huggingface.co", 443)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, pytest.raises(ConnectionRefusedError):
        udp.sendto(b"x", ("8.8.8.8", 53))  # a DNS query by hand


def test_child_processes_are_offline_too_and_need_no_hub_setting():
    """Notebook kernels, JupyterLab and the CLIs are child processes: they inherit the guard through PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}  # no HF_HUB_OFFLINE anywhere
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=60)
    assert out.stdout.startswith("NetworkDisabled") and "course runs offline" in out.stdout, out.stdout + out.stderr
    assert "HF_HUB_OFFLINE" not in open(os.path.join(os.path.dirname(__file__), "..", "Makefile")).read()


def test_loopback_still_works():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        with socket.create_connection(server.getsockname(), timeout=5):
            conn, _ = server.accept()
            conn.close()
    assert socket.getaddrinfo("localhost", 80)


def test_a_notebook_kernel_is_offline():
    """nbval runs every notebook in a kernel like this one, started by jupyter_client from the test process."""
    from jupyter_client.manager import start_new_kernel

    manager, client = start_new_kernel(kernel_name="python3")
    printed = []
    try:
        client.execute_interactive(PROBE, timeout=60,
                                   output_hook=lambda msg: printed.append(msg["content"].get("text", "")))
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)
    assert "".join(printed).startswith("NetworkDisabled"), printed
