"""``tunelab ui``: a local web app over the registry, the run folders, blind review and started runs.

Server-rendered pages (Jinja2 templates and one script, all shipped in this package: no build step,
no CDN) on the same FastAPI/uvicorn stack as serving. ``views`` reads values, ``app`` renders them,
``jobs`` starts and cancels real ``tunelab run`` processes, ``server`` checks the address and runs uvicorn.
"""

from tunelab.ui.app import UISettings, create_app
from tunelab.ui.server import run_ui

__all__ = ["UISettings", "create_app", "run_ui"]
