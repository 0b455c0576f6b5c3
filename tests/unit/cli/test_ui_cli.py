"""``tunelab ui``: a port in use is one line and exit 2, before any address is announced."""

import os
import signal
import socket
import subprocess
import sys
import time

import httpx

from tunelab.registry import Registry


def test_a_port_in_use_is_one_line_and_no_address_is_announced(tmp_path):
    # Port 7860 is also Gradio's default: a second `tunelab ui` announced its address (where the other app answers),
    # then uvicorn logged the bind error and exited 3.
    Registry(tmp_path / "registry.db")  # `--registry` names an existing registry (a mistyped path is refused)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "tunelab.cli.main", "ui", "--port", str(port), "--registry", str(tmp_path / "registry.db")],
            capture_output=True, text=True, timeout=120,
        )
    assert result.returncode == 2, result.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr and "Traceback" not in result.stderr
    assert "tunelab ui on" not in result.stderr


def test_tunelab_ui_announces_the_port_it_bound_and_answers_there(tmp_path):
    Registry(tmp_path / "registry.db")
    server = subprocess.Popen(
        [sys.executable, "-m", "tunelab.cli.main", "ui", "--port", "0", "--registry", str(tmp_path / "registry.db")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "TUNELAB_UI_API_KEY": ""},
    )
    try:
        line = server.stderr.readline()
        assert line.startswith("tunelab ui on http://127.0.0.1:"), line
        url = line.split()[3]
        assert not url.endswith(":0/"), line
        deadline, page = time.monotonic() + 120, None
        while page is None and time.monotonic() < deadline and server.poll() is None:
            try:
                page = httpx.get(url, timeout=5)
            except httpx.TransportError:
                time.sleep(0.3)
        assert page is not None and page.status_code == 200 and "Runs" in page.text
    finally:
        server.send_signal(signal.SIGINT)
        server.communicate(timeout=60)
