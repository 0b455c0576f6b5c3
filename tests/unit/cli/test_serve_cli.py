"""``tunelab serve``: a public bind without an API key, and a port in use, are refused before anything loads."""

import subprocess
import sys


def test_cli_refuses_public_bind_without_key():
    result = subprocess.run(
        [sys.executable, "-m", "tunelab.cli.main", "serve", "--host", "0.0.0.0", "--model", "no-such-model"],
        capture_output=True, text=True, timeout=120, env={**__import__("os").environ, "TUNELAB_API_KEY": ""},
    )
    assert result.returncode == 2, result.stderr
    assert "without an API key" in result.stderr and "Traceback" not in result.stderr


def test_cli_names_a_port_in_use_before_loading_any_model():
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # No such model: had the model been loaded first, the error would be about the model.
        result = subprocess.run(
            [sys.executable, "-m", "tunelab.cli.main", "serve", "--port", str(port), "--model", "no-such-model"],
            capture_output=True, text=True, timeout=120,
        )
    assert result.returncode == 2, result.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr and "Traceback" not in result.stderr


def test_tunelab_serve_answers_on_the_port_it_bound_and_stops_on_sigterm(tiny_model_dir, tmp_path):
    import os
    import signal
    import socket
    import time

    import httpx

    def start() -> tuple[subprocess.Popen, int, dict | None]:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        server = subprocess.Popen(
            [sys.executable, "-m", "tunelab.cli.main", "serve", "--model", str(tiny_model_dir), "--port", str(port),
             "--log-db", str(tmp_path / "requests.db")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1", "TUNELAB_API_KEY": ""},
        )
        try:
            deadline, models = time.monotonic() + 120, None
            while models is None and time.monotonic() < deadline and server.poll() is None:
                try:
                    models = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=5).json()
                except httpx.TransportError:
                    time.sleep(0.3)
        except BaseException:
            server.kill()
            server.communicate()
            raise
        return server, port, models

    server, port, models = start()
    try:
        # The port was free when probed, and another process may take it before the server binds it: the server then
        # refuses at once (as the test above checks), and is started again on another free port.
        for _ in range(2):
            if models is not None or server.returncode != 2:
                break
            refused = server.stderr.read()
            assert f"cannot listen on 127.0.0.1:{port}" in refused, refused
            server, port, models = start()
        assert models is not None, server.stderr.read() if server.poll() is not None else "no answer in 120 s"
        name = models["data"][0]["id"]
        answer = httpx.post(f"http://127.0.0.1:{port}/v1/completions", json={"model": name, "prompt": "hello", "max_tokens": 2}, timeout=60)
        assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] >= 1
    finally:
        server.send_signal(signal.SIGTERM)
        _, stderr = server.communicate(timeout=60)
    assert server.returncode in (0, -signal.SIGTERM), stderr  # uvicorn re-raises the signal once shut down cleanly
    assert f"listening on http://127.0.0.1:{port}" in stderr and "Application shutdown complete" in stderr
