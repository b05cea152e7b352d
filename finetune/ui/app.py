"""The web app's HTTP side: a JSON API over the recipe form, the dry run, the runs and their processes, plus the
OpenAI-compatible ``/v1`` router over every finished run (the page's chat calls it like any OpenAI client), and the
static page itself (``static/``: plain HTML and JavaScript, uPlot for the charts).
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Optional

from fastapi import Body, FastAPI
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles

from ..errors import RunFolderError, UserError
from ..recipe_file import load_recipe
from ..serve import RunPool, allowed_hosts, openai_router, request_guard
from .forms import form_of, header_comment, recipe_files, resolve_inside, save_recipe, validate
from .jobs import Jobs

__all__ = ["create_app"]

STATIC = Path(__file__).with_name("static")


def create_app(project: Path, runs: Path, token: Optional[str] = None, host: str = "127.0.0.1") -> FastAPI:
    """The app for recipes in ``project/recipes`` and runs in ``runs``."""
    project = project.resolve()
    jobs = Jobs(project, runs)
    app = FastAPI(title="finetune", docs_url=None, redoc_url=None)
    app.include_router(openai_router(RunPool(jobs.finished)))
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    request_guard(app, token, allowed_hosts(host), public=("/static/", "/favicon"))
    dry_run = threading.Lock()  # one at a time: each tokenizes the data on the same cores
    # The page is served at once; transformers and torch (seconds) load meanwhile, for the form's first check.
    # What needs them waits for that import to end: importing transformers from two threads at once breaks it
    # ("cannot import name 'TrainingArguments'" from its half-initialised lazy module).
    warm = threading.Event()
    threading.Thread(target=_warm_up, args=(warm,), daemon=True).start()

    @app.exception_handler(UserError)
    def user_error(request, err: UserError):
        return JSONResponse({"error": str(err)}, status_code=409 if isinstance(err, RunFolderError) else 400)

    @app.get("/")
    def page():
        return FileResponse(STATIC / "index.html")

    @app.get("/favicon.ico")
    def favicon():
        return Response(status_code=204)

    @app.get("/api/recipes")
    def recipes():
        return recipe_files(project)

    @app.get("/api/form")
    def form(recipe: str):
        warm.wait()
        path = resolve_inside(project, recipe, "recipe")
        loaded = load_recipe(path)
        return {"recipe": recipe, "name": loaded.name, "header": header_comment(path), "sections": form_of(loaded)}

    @app.post("/api/validate")
    def check(recipe: str = Body(), overrides: list[str] = Body(default=[])):
        warm.wait()
        valid, errors, general = validate(project, recipe, overrides)
        return {"ok": valid is not None, "errors": errors, "general": general}

    @app.post("/api/preview")
    def preview(recipe: str = Body(), overrides: list[str] = Body(default=[])):
        """The dry run (``finetune.run --dry-run``) for the form as it stands: the label audit and examples."""
        warm.wait()
        valid, errors, general = validate(project, recipe, overrides)
        if valid is None:
            return JSONResponse({"errors": errors, "general": general}, status_code=400)
        from ..train import train

        with dry_run:
            return train(valid, dry_run=True).preview

    @app.post("/api/launch")
    def launch(recipe: str = Body(), overrides: list[str] = Body(default=[])):
        warm.wait()
        valid, errors, general = validate(project, recipe, overrides)
        if valid is None:
            return JSONResponse({"errors": errors, "general": general}, status_code=400)
        return {"run": jobs.launch(resolve_inside(project, recipe, "recipe"), overrides, valid.name)}

    @app.post("/api/save")
    def save(recipe: str = Body(), name: str = Body(), overrides: list[str] = Body(default=[]),
             overwrite: bool = Body(default=False)):
        warm.wait()
        path = save_recipe(project, recipe, overrides, name, overwrite)
        return {"path": str(path.relative_to(project))}

    @app.get("/api/runs")
    def runs_list():
        return jobs.list()

    @app.get("/api/runs/{run}")
    def run_detail(run: str):
        return {**(jobs.describe(jobs.folder(run).name) or {"name": run, "state": "missing"}),
                "logs": jobs.logs(run), "samples": jobs.samples(run)}

    @app.get("/api/runs/{run}/output", response_class=PlainTextResponse)
    def run_output(run: str):
        log = jobs.runs / ".ui" / f"{jobs.folder(run).name}.log"
        return log.read_text(encoding="utf-8", errors="replace")[-20000:] if log.exists() else ""

    @app.post("/api/runs/{run}/stop")
    def stop(run: str):
        jobs.stop(run)
        return {"ok": True}

    @app.post("/api/runs/{run}/resume")
    def resume(run: str):
        jobs.resume(run)
        return {"ok": True}

    @app.post("/api/runs/{run}/export")
    def export(run: str, quant: str = Body(default="f16", embed=True)):
        return jobs.export(run, quant)

    return app


def _warm_up(done: threading.Event) -> None:
    try:
        import transformers.training_args  # noqa: F401 - TrainingArguments' fields and choices, for the form

        from .. import train  # noqa: F401 - the dry run
    finally:
        done.set()
