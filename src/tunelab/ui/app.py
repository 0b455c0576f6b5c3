"""The FastAPI app of ``tunelab ui``: server-rendered pages (Jinja2) and the few JSON endpoints their scripts poll.

Every page is rendered from values the library returns (``tunelab.ui.views``); the scripts in
``static/ui.js`` only sort and filter tables, draw the loss curve, send review judgments and poll.

Guards, because a local web app is reachable by every page the user's browser opens:
- the Host header must name this machine (or the bound host): a DNS-rebinding page cannot read it;
- every POST must carry the ``X-Tunelab-UI`` header, which a cross-site form cannot send and a
  cross-site script cannot add without a CORS preflight this app never grants;
- with an API key, a request needs it as ``Authorization: Bearer KEY``, the ``tunelab_ui_key``
  cookie, or once as ``?key=KEY`` (which sets the cookie).
"""

from __future__ import annotations

import hmac
import html
import mimetypes
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape

from tunelab.errors import ConfigError, TunelabError
from tunelab.estimate.plan import duration, money
from tunelab.estimate.summary import estimate_summary
from tunelab.paths import atomic_write_text
from tunelab.registry import Registry, RegistryError
from tunelab.serve.settings import host_allowed

PACKAGE = Path(__file__).resolve().parent
KEY_COOKIE = "tunelab_ui_key"
POST_HEADER = "x-tunelab-ui"
# What a run's Resume continues (`tunelab run --resume RUN`): Cancel leaves a run cancelled.
RESUMABLE = ("interrupted", "cancelled", "failed")


@dataclass(frozen=True)
class UISettings:
    """What ``tunelab ui`` is told."""

    registry: Path
    host: str = "127.0.0.1"
    port: int = 7860
    api_key: str | None = None
    insecure: bool = False
    jobs_dir: Path | None = None  # where started runs keep their log (default: beside the registry)
    # Where configs of runs started from the browser may be (with the registry's folder): the folder
    # `tunelab ui` was started in. A config path elsewhere is refused: the estimate endpoint once
    # echoed the first line of any readable file (/etc/shadow) in its error message.
    project: Path | None = None

    def config_roots(self) -> list[Path]:
        roots = [Path(self.project or Path.cwd()), Path(self.registry).parent]
        return [root.resolve() for root in roots]


def check_config_path(config: str, settings: UISettings) -> str:
    """``config`` as an absolute path (a relative one is in the project folder), refused outside the project
    and registry folders (symlinks followed).

    Raises:
        ConfigError: naming the folders a config may be in.
    """
    from tunelab.errors import ConfigError

    roots = settings.config_roots()
    given = Path(config).expanduser()
    given = given if given.is_absolute() else roots[0] / given
    target = given.resolve()
    if not any(target == root or root in target.parents for root in roots):
        raise ConfigError(
            f"config {config} is outside the folders this UI serves",
            "give a config inside " + " or ".join(str(root) for root in dict.fromkeys(roots)),
        )
    return str(given) if config else config


async def json_object(request: Request) -> dict[str, Any]:
    """The request body as a JSON object.

    Raises:
        ConfigError: for a body that is not JSON or not an object (``[]`` once gave a 500): a 400.
    """
    from tunelab.errors import ConfigError

    try:
        body = await request.json()
    except ValueError:
        raise ConfigError("the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ConfigError("the request body must be a JSON object")
    return body


def create_app(settings: UISettings):
    """The ASGI app over ``settings.registry`` (opened, and created when missing)."""
    from tunelab.ui import views
    from tunelab.ui.jobs import JobManager
    from tunelab.ui.playground import Playground

    registry = Registry(settings.registry)
    jobs = JobManager(registry.path, settings.jobs_dir or registry.path.parent / "ui-jobs")
    playground = Playground()
    templates = Environment(loader=FileSystemLoader(PACKAGE / "templates"), autoescape=select_autoescape(["html"]))
    from tunelab.evaluation.report import CONFUSION_SCRIPT, CONFUSION_STYLE, confusion_html

    templates.globals.update(
        number=views.number, signed=views.signed, size=views.size, verdict_kind=views.verdict_kind, outcome_kind=views.outcome_kind, duration=duration, money=money, confusion_html=confusion_html,
        confusion_script=CONFUSION_SCRIPT, confusion_style=CONFUSION_STYLE,
    )

    async def lifespan(app):
        yield
        jobs.stop_all()
        playground.close()

    app = FastAPI(title="tunelab ui", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.registry = registry
    app.state.jobs = jobs
    app.mount("/static", StaticFiles(directory=PACKAGE / "static"), name="static")

    @app.middleware("http")
    async def guard(request: Request, call_next):
        if not host_allowed(request.headers.get("host", ""), settings.host):
            return Response("this address is not served here", status_code=421)
        if settings.api_key:
            # The key in the address first: a browser shares cookies across a host's ports, so another `tunelab ui`
            # (or this one before its key changed) may have left a cookie that must not shadow the key given now.
            given = request.query_params.get("key") or request.cookies.get(KEY_COOKIE) or ""
            auth = request.headers.get("authorization", "")
            if auth.lower().startswith("bearer "):
                given = auth[7:].strip()
            if not hmac.compare_digest(given.encode(), settings.api_key.encode()):
                return HTMLResponse(
                    "<h1>401: this tunelab ui needs its API key</h1><p>open the address with <code>?key=YOUR_KEY</code> once.</p>",
                    status_code=401,
                )
            if request.query_params.get("key"):
                # Drop the key from the address bar (and history) once the cookie holds it.
                target = request.url.remove_query_params("key")
                response = RedirectResponse(str(target), status_code=303)
                # Lax, not Strict: the key link is often opened from another site (a chat, a wiki), and the redirect that
                # follows it counts as cross-site, so a Strict cookie was not sent and the user got the 401 page again.
                # Cross-site writes stay refused by the POST header guard below, whatever the cookie.
                response.set_cookie(KEY_COOKIE, settings.api_key, httponly=True, samesite="lax")
                return response
        if request.method not in ("GET", "HEAD") and request.headers.get(POST_HEADER) != "1":
            return JSONResponse({"error": f"a {request.method} needs the {POST_HEADER} header (sent by the UI's own pages)"}, status_code=403)
        return await call_next(request)

    def page(name: str, status: int = 200, **values: Any) -> HTMLResponse:
        return HTMLResponse(templates.get_template(name).render(registry_path=str(registry.path), **values), status_code=status)

    def error_status(error: TunelabError) -> int:
        from tunelab.ui.jobs import UnknownJob

        unknown = isinstance(error, UnknownJob) or (isinstance(error, RegistryError) and error.message.startswith("no run"))
        return 404 if unknown else 400

    @app.exception_handler(TunelabError)
    async def tunelab_error(request: Request, error: TunelabError):
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": error.message, "hint": error.hint}, status_code=error_status(error))
        return page("error.html", status=error_status(error), message=error.message, hint=error.hint)

    @app.get("/", response_class=HTMLResponse)
    def runs_page(request: Request):
        return page("runs.html", **views.runs_page(registry), active="runs")

    @app.get("/runs/{run}", response_class=HTMLResponse)
    def run_page(run: str):
        values = views.run_page(registry, run)
        job = next((j for j in jobs.jobs.values() if j.run_dir.resolve() == Path(values["record"].run_dir or "").resolve()), None)
        from tunelab.tasks.pipeline import resume_refusal

        resumable = values["record"].status in RESUMABLE and values["files"].get("exists") and not (job and job.status() == "running")
        # What `tunelab run --resume` would stop at at once (a cloud job cancelled at the provider) is said, not offered.
        refusal = resume_refusal(values["record"].run_dir) if resumable else None
        return page("run.html", **values, job=job, resumable=resumable and refusal is None, resume_refusal=refusal, active="runs")

    @app.post("/api/runs/{run}/resume")
    def resume_run(run: str):
        record = views.get_run(registry, run)
        if record.status not in RESUMABLE:
            raise ConfigError(f"run {record.name} is {record.status}: only an interrupted, cancelled or failed run is resumed")
        if not record.run_dir or not Path(record.run_dir).is_dir():
            raise RegistryError(f"run {record.name} has no run folder here")
        job = jobs.resume(Path(record.run_dir))
        return {"id": job.id, "url": f"/jobs/{job.id}", "run": job.name}

    @app.post("/api/runs/{run}/promote")
    async def promote_run(run: str, request: Request):
        from starlette.concurrency import run_in_threadpool

        from tunelab.tasks.retrain import promote_checked

        body = await json_object(request)
        alias = str(body.get("alias") or "").strip()
        reason = str(body.get("reason") or "").strip() or "manual promote (tunelab ui)"
        record = views.get_run(registry, run)
        # `tunelab promote ALIAS RUN`'s own function: the run's weights are read in full (seconds), off the event loop.
        # No force here: a refusal names `tunelab promote ... --force` for promoting anyway.
        change = await run_in_threadpool(promote_checked, registry, alias, record.id, reason=reason)
        return change.as_dict()

    @app.post("/api/aliases/{alias}/rollback")
    async def rollback_alias(alias: str):
        from starlette.concurrency import run_in_threadpool

        from tunelab.tasks.retrain import rollback

        change = await run_in_threadpool(rollback, registry, alias, reason="rollback (tunelab ui)")
        return change.as_dict()

    @app.get("/api/runs/{run}/progress")
    def run_progress(run: str):
        record = views.get_run(registry, run)
        return views.progress(record.run_dir, record)

    @app.get("/runs/{run}/files/{path:path}")
    def run_file(run: str, path: str = ""):
        record = views.get_run(registry, run)
        if not record.run_dir:
            raise RegistryError(f"run {record.name} has no run folder recorded")
        root = Path(record.run_dir).resolve()
        target = (root / path).resolve()
        if target != root and root not in target.parents:
            return Response("outside the run folder", status_code=403)
        if target.is_dir():
            entries = sorted(target.iterdir())
            items = "".join(
                f'<li><a href="/runs/{html.escape(record.id)}/files/{html.escape(str(e.relative_to(root)))}">{html.escape(e.name)}{"/" if e.is_dir() else ""}</a>'
                f' {"" if e.is_dir() else f"({e.stat().st_size:,} bytes)"}</li>'
                for e in entries
            )
            return HTMLResponse(f"<!doctype html><title>{html.escape(target.name)}</title><h1>{html.escape(str(target))}</h1><ul>{items}</ul>")
        if not target.is_file():
            return Response("not found", status_code=404)
        media = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        if target.suffix in (".jsonl", ".yaml", ".md", ".csv"):
            media = "text/plain; charset=utf-8"
        return FileResponse(target, media_type=media)

    @app.get("/compare", response_class=HTMLResponse)
    def compare_page(request: Request):
        runs = [value for value in request.query_params.getlist("runs") if value]
        if len(runs) < 2:
            raise RegistryError("select two or more runs to compare", "tick them on the Runs page")
        return page("compare.html", **views.compare_page(registry, runs), active="runs")

    @app.get("/runs/{run}/review", response_class=HTMLResponse)
    def review_page(run: str, reviewer: str | None = None):
        return page("review.html", state=views.review_state(registry, run, reviewer), active="runs")

    @app.get("/api/runs/{run}/review")
    def review_get(run: str, reviewer: str | None = None):
        return views.review_state(registry, run, reviewer)

    @app.post("/api/runs/{run}/review")
    async def review_post(run: str, request: Request):
        from tunelab.evaluation.review import open_run_review

        body = await json_object(request)
        reviewer = str(body.get("reviewer") or "").strip()
        preference = {"1": "A", "2": "B", "t": "tie", "s": "skip"}.get(str(body.get("preference")), str(body.get("preference")))
        if preference not in ("A", "B", "tie", "skip"):
            return JSONResponse({"error": "preference must be A, B, tie or skip"}, status_code=400)
        record = views.get_run(registry, run)
        sheet = open_run_review(record.run_dir)
        example_id = str(body.get("example_id") or "")
        if example_id not in sheet.sides:
            return JSONResponse({"error": f"example {example_id!r} is not on this run's review sheet"}, status_code=400)
        registry.add_review(record.id, sheet=sheet.path, example_id=example_id, reviewer=reviewer, preference=preference)
        return views.review_state(registry, record.id, reviewer)

    @app.post("/api/runs/{run}/review/pairs")
    def review_pairs(run: str):
        from tunelab.evaluation.review import open_run_review, registry_review_pairs

        record = views.get_run(registry, run)
        sheet = open_run_review(record.run_dir)
        from tunelab.runs import RunFolder

        out = RunFolder(Path(record.run_dir)).review_pairs
        result = registry_review_pairs(registry, record.id, sheet, out)
        return {**result.to_dict(), "url": f"/runs/{record.id}/files/{out.name}"}

    @app.get("/playground", response_class=HTMLResponse)
    def playground_page(request: Request):
        chosen = [value for value in request.query_params.getlist("runs") if value][:2]
        return page("playground.html", **views.playground_page(registry, chosen), active="playground")

    @app.post("/api/playground")
    async def playground_answer(request: Request):
        body = await json_object(request)
        picked = body.get("runs") or []
        runs = [str(run) for run in (picked if isinstance(picked, list) else [picked]) if str(run).strip()][:2]
        if not runs:
            raise ConfigError("pick one run, or two to compare")
        records = [views.get_run(registry, run) for run in runs]
        prompt = str(body.get("prompt") or "")
        try:
            max_tokens = max(1, min(int(body.get("max_tokens") or 128), 1024))
        except (TypeError, ValueError):
            raise ConfigError(f"max_tokens must be a whole number, got {body.get('max_tokens')!r}") from None
        answers = []
        for record in records:
            if not record.run_dir or not Path(record.run_dir).is_dir():
                raise RegistryError(f"run {record.name} has no run folder here")
            answers.append(await playground.answer(Path(record.run_dir), prompt, max_tokens=max_tokens))
        return {"answers": answers}

    @app.get("/start", response_class=HTMLResponse)
    def start_page(config: str = ""):
        options = views.start_options(registry)
        chosen = config or (options["configs"][0] if options["configs"] else "")
        return page("start.html", config=chosen, options=options, jobs=[j for j in jobs.jobs.values() if j.kind == "run"], active="start")

    @app.get("/advise", response_class=HTMLResponse)
    def advise_list_page():
        return page("advise.html", advice_name=None, rows=views.advice_list(registry), active="advise")

    @app.get("/advise/{name}", response_class=HTMLResponse)
    def advise_page(name: str):
        values = views.advice_page(registry, name)
        folder = views.advice_folder(registry, name).resolve()
        job = next((j for j in jobs.jobs.values() if j.kind == "advise" and j.run_dir.resolve() == folder), None)
        return page("advise.html", **values, job=job, active="advise")

    @app.post("/api/advise")
    async def start_advise(request: Request):
        body = await json_object(request)
        config_path, overrides, _ = _start_body(body)
        options = {}
        for key in ("budget_minutes", "label_usd"):
            value = body.get(key)
            if value not in (None, ""):
                try:
                    options[key] = float(value)
                except (TypeError, ValueError):
                    return JSONResponse({"error": f"{key} must be a number, got {value!r}"}, status_code=400)
        job = jobs.start_advise(config_path, overrides, retrain_every=str(body.get("retrain_every") or "30d"), **options)
        return {"id": job.id, "url": f"/advise/{job.name}", "name": job.name}

    def _start_body(body: dict[str, Any]) -> tuple[str, list[str], bool]:
        """(config file, overrides, calibrate) of the start form: the pickers' fields, then the free overrides.

        Without a config file the fields are the whole config: it is written beside the UI's job logs. A config
        or data file must lie in the folders this UI serves (the page would otherwise read any file it is given).
        """
        config = str(body.get("config") or "").strip()
        fields = dict(body.get("fields")) if isinstance(body.get("fields"), dict) else {}
        for data_field in ("train", "test"):
            if str(fields.get(data_field) or "").strip():
                fields[data_field] = check_config_path(str(fields[data_field]).strip(), settings)
        overrides = views.start_overrides(fields)
        overrides += [line.strip() for line in str(body.get("overrides") or "").splitlines() if line.strip()]
        if config:
            config = check_config_path(config, settings)
        else:
            if not str(fields.get("train") or "").strip():
                raise ConfigError("pick a config file, or the training data (and task) of a new run")
            folder = jobs.jobs_dir / "configs"
            folder.mkdir(parents=True, exist_ok=True)
            target = folder / f"{uuid.uuid4().hex[:10]}.yaml"
            atomic_write_text(target, yaml.safe_dump({"task": str(fields.get("task") or "classify"), "model": "default"}))
            config = str(target)
        return config, overrides, bool(body.get("calibrate", False))

    @app.post("/api/estimate")
    async def estimate(request: Request):
        from starlette.concurrency import run_in_threadpool

        from tunelab.data.split import make_split
        from tunelab.estimate import estimate_from_config
        from tunelab.runs import load_model
        from tunelab.tasks.pipeline import estimate_cloud_run, remote_baseline_prices, warnings_before_start
        from tunelab.ui.jobs import prepare_run

        config_path, overrides, calibrate = _start_body(await json_object(request))
        config, _ = prepare_run(config_path, overrides, registry.path)

        def check_and_estimate():
            # What `tunelab run` warns of before any compute, and the estimate: both shown before Start, on one split and
            # one model load (the check reads its tokenizer: a large one takes seconds to load again on a cold cache).
            split = make_split(config)
            loaded = load_model(config.model.name, allow_network=config.model.allow_network, revision=config.model.revision)
            warnings = warnings_before_start(config, loaded.tokenizer, split)  # first: calibration may change the model
            if config.train.backend != "local":
                # A provider trains it: its job's price and budget as `tunelab run` checks them, nothing timed here.
                return warnings, estimate_cloud_run(config, split=split, loaded=loaded)
            estimate = estimate_from_config(config, calibrate_here=calibrate, split=split, loaded=loaded)
            # As `tunelab run`'s estimate step: the remote baselines' requests, in the money and in budget.max_usd.
            return warnings, estimate.with_remote_baselines(config, remote_baseline_prices(config, split)).as_dict()

        # Loads the model and splits the data (seconds); off the event loop so other pages stay live.
        warnings, data = await run_in_threadpool(check_and_estimate)
        command = " ".join(["tunelab", "run", config_path, *overrides])
        return {"run": config.name, "lines": estimate_summary(data), "estimate": data, "command": command, "warnings": warnings}

    @app.post("/api/jobs")
    async def start_job(request: Request):
        config_path, overrides, calibrate = _start_body(await json_object(request))
        job = jobs.start(config_path, overrides, calibrate=calibrate)
        return {"id": job.id, "url": f"/jobs/{job.id}", "run": job.name}

    def job_state(job) -> dict[str, Any]:
        record = None
        try:
            record = views.get_run(registry, job.name)
        except RegistryError:
            pass
        # Only the row of this job's own folder: a row of the same name for another folder is another run.
        if record is not None and (not record.run_dir or Path(record.run_dir).resolve() != job.run_dir.resolve()):
            record = None
        state = views.progress(job.run_dir, record)
        status = job.status()
        if status == "cancelled" and record is not None and record.status == "finished":
            # Cancel came once the run was registered finished (its process printing the outcome): it stopped nothing.
            status = "finished"
        return {
            **state, "id": job.id, "name": job.name, "job_status": status, "log": job.log_tail(),
            "run_id": record.id if record else None, "verdict": record.verdict if record else None,
            "verdict_kind": views.verdict_kind(record.verdict if record else None),
            "command": "tunelab " + " ".join(job.command[3:]),
            "cloud": job.cloud, "cloud_cancel": job.cloud_cancel, "can_cancel": job.can_cancel(),
        }

    @app.get("/jobs/{job_id}", response_class=HTMLResponse)
    def job_page(job_id: str):
        job = jobs.get(job_id)
        return page("job.html", job=job, state=job_state(job), active="start")

    @app.get("/api/jobs/{job_id}")
    def job_api(job_id: str):
        return job_state(jobs.get(job_id))

    @app.post("/api/jobs/{job_id}/cancel")
    def job_cancel(job_id: str):
        return job_state(jobs.cancel(job_id))

    return app
