"""A stop (Ctrl-C, the SIGTERM the CLI turns into one) while the client waits out a provider's Retry-After.

The batch gave the stop to its caller at once, but its worker went on waiting and then asked the provider once more:
in a notebook, whose process lives on, a request the user had stopped still reached the provider (and was billed).
"""

from __future__ import annotations

import signal
import threading

import pytest
from fake_provider import FakeProvider

from tunelab.config import EndpointConfig
from tunelab.remote.client import RemoteClient

BASE_MODEL = "gpt-4o-mini-2024-07-18"


@pytest.fixture
def provider():
    fake = FakeProvider()
    fake.url = fake.start()
    yield fake
    fake.stop()


@pytest.fixture
def ctrl_c_raises():
    """Ctrl-C as in a terminal or a notebook: a KeyboardInterrupt in the main thread, whatever handler another test in
    this process left (an ignored SIGINT, or one that does not raise, would let the batch run on and prove nothing)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_a_stop_during_a_retry_after_wait_ends_the_batch_at_once_and_asks_nothing_more(provider, monkeypatch, ctrl_c_raises):
    import tunelab.remote.client as client_module

    provider.rate_limit_next = 1
    provider.rate_limit_headers = {"retry-after": "120"}  # a rate limit's two minutes: waited for, with one line
    asked_to_wait, released, outlived = [], threading.Event(), []
    main = threading.main_thread().ident

    def wait(seconds, *stop):
        asked_to_wait.append(seconds)
        signal.pthread_kill(main, signal.SIGINT)  # the user's Ctrl-C while the client waits
        # Held until the caller has the stop: a batch that waited for this wait to end would hold it for 60 s.
        outlived.append(not released.wait(60))

    monkeypatch.setattr(client_module, "_sleep", wait)
    client = RemoteClient(EndpointConfig(base_url=provider.url, name=BASE_MODEL, max_retries=3, timeout_s=30), cache=None)
    with pytest.raises(KeyboardInterrupt):
        client.chat_many([[{"role": "user", "content": "what is my bill?"}]], max_tokens=8)
    released.set()  # the wait ends, as the 120 s would later
    for thread in threading.enumerate():
        if thread.name.startswith("tunelab-remote-"):
            thread.join(60)
    assert asked_to_wait == [120.0] and outlived == [False]
    assert provider.count("POST", "/v1/chat/completions") == 1  # the refused one; none after the stop
