"""The one training loop (``loop.py``), its losses, batching and checkpoints."""
