"""Remote, OpenAI-compatible models: as models to evaluate, teachers to distill from, and a fine-tuning backend.

``client`` the one client (bounded concurrency, retries, timeouts, cost) · ``cache`` the SQLite
request cache · ``finetune`` a provider's fine-tuning API as a training backend.
"""

from tunelab.remote.cache import RequestCache, default_cache_path
from tunelab.remote.client import Answer, RemoteClient, RemoteError, Usage, summarize

__all__ = ["Answer", "RemoteClient", "RemoteError", "RequestCache", "Usage", "default_cache_path", "summarize"]
