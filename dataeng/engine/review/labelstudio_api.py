"""``dataeng review push`` / ``pull``: a Label Studio review through a real server's API (``label-studio-sdk``).

Push takes a review exported with ``--format labelstudio`` and, on the server at ``url``:

1. creates the project (title ``--project``, default ``dataeng review <id>``) with the export's
   ``labeling_config.xml``, or reuses the project of that title (its config updated when it differs);
2. makes the images reachable: a *Local files* import storage for ``OUT/images`` (Label Studio
   serves ``/data/local-files/?d=<path>`` only below ``LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT``
   with ``LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true``, and only inside such a storage; it is
   never synced: the tasks come from us);
3. imports the tasks with their predictions, and records the project, the storage and each item's
   task id in the review row (``reviews.meta["labelstudio"]``, items' ``labelstudio_task_id``).

Pull downloads the project's "JSON" export into ``reviews/<id>/pulled/<time>/`` (with the project's
labelling config beside it) and imports it like any Label Studio export
(:func:`dataeng.engine.review.importing.import_review`).

The token comes from ``LABEL_STUDIO_API_KEY`` only: it is never written to disk or to the
registry, and never appears in a message. A server that is down or refuses a request is one
line naming the URL, the request and the HTTP status (:class:`~dataeng.errors.ServiceError`),
also recorded as a ``service`` problems row of the push or pull batch.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import select

from dataeng.annotation.formats import labelstudio
from dataeng.annotation.formats.jsonfile import load_json
from dataeng.annotation.formats.labelstudio_regions import CONFIG_FILE, IMAGE_TAG, SDK_INSTALL
from dataeng.db.schema import Batch, Problem, ProblemKind, Review, utcnow
from dataeng.engine.review.items import items_of
from dataeng.engine.review.labelstudio_tasks import ITEM_KEY, REVIEW_KEY
from dataeng.errors import DataEngError, ServiceError
from dataeng.progress import Progress
from dataeng.storage import atomic_write_text

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from dataeng.engine.review.importing import ReviewImport
    from dataeng.workspace import Workspace

API_KEY_ENV = "LABEL_STUDIO_API_KEY"
TIMEOUT_S = 120.0
STORAGE_TITLE = "dataeng review images"
T = TypeVar("T")


@dataclass(frozen=True)
class PushResult:
    """What one push did; ``to_dict`` is the ``--json`` output (no token)."""

    review_id: int
    url: str
    project_id: int
    project: str
    project_reused: bool
    storage_id: int
    tasks: int

    def to_dict(self) -> dict[str, Any]:
        return {"review_id": self.review_id, "url": self.url, "project_id": self.project_id, "project": self.project,
                "project_reused": self.project_reused, "storage_id": self.storage_id, "tasks": self.tasks}


class _Server:
    """The SDK client of one server; every call goes through :meth:`call`, which turns the SDK's and
    httpx's errors into one-line :class:`ServiceError`\\ s without the token."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        if not self.url.startswith(("http://", "https://")) or len(self.url.split("://", 1)[1]) == 0:
            raise DataEngError("expected the server's http:// or https:// URL, e.g. http://127.0.0.1:8080",
                               field="--labelstudio", value=url)
        self.token = os.environ.get(API_KEY_ENV, "").strip()
        if not self.token:
            raise DataEngError(f"set {API_KEY_ENV} to your Label Studio access token (Account & Settings)",
                               field=API_KEY_ENV)
        try:
            from label_studio_sdk import LabelStudio
            from label_studio_sdk.core.api_error import ApiError
        except ImportError as e:
            raise DataEngError(f"talking to Label Studio needs label-studio-sdk: {SDK_INSTALL}", field="labelstudio",
                               value=self.url) from e
        self.api_error = ApiError
        try:
            self.client = LabelStudio(base_url=self.url, api_key=self.token, timeout=TIMEOUT_S)
        except ApiError as e:  # the SDK checks a JWT token's expiry up front
            raise self._refused("the access token", e) from None

    def _scrub(self, text: str) -> str:
        return text.replace(self.token, "***") if self.token else text

    def _refused(self, what: str, error: Any) -> ServiceError:
        status = getattr(error, "status_code", None)
        body = getattr(error, "body", None)
        detail = ""
        if isinstance(body, dict):
            detail = str(body.get("detail") or "")
            if body.get("validation_errors"):
                detail += f" {json.dumps(body['validation_errors'])[:300]}"
        elif body:
            detail = str(body)[:200]
        hint = f"; check {API_KEY_ENV}" if status in (401, 403) else ""
        return ServiceError(self._scrub(f"{what}: HTTP {status}" + (f" ({detail.strip()})" if detail else "") + hint),
                            path=self.url)

    def call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)``; errors become :class:`ServiceError` naming the URL and ``what``."""
        import httpx

        try:
            return fn(*args, **kwargs)
        except self.api_error as e:
            raise self._refused(what, e) from None
        except httpx.HTTPError as e:
            reason = type(e).__name__
            if isinstance(e, httpx.ConnectError):
                reason = "cannot connect: is the server running?"
            raise ServiceError(self._scrub(f"{what}: no answer ({reason})"), path=self.url) from None
        except ValueError as e:  # a 2xx answer that is not JSON, or not the JSON the SDK expects
            raise ServiceError(self._scrub(f"{what}: not a Label Studio answer ({type(e).__name__})"),
                               path=self.url) from None


# ---------------------------------------------------------------- push
def push_review(
    workspace: Workspace,
    session: Session,
    url: str,
    *,
    review_id: int | None = None,
    project: str | None = None,
    document_root: Path | str | None = None,
) -> PushResult:
    """Send a ``--format labelstudio`` review to a Label Studio server (see the module docstring).

    Args:
        workspace, session: committed by this function (the caller closes the session).
        url: the server, e.g. ``http://127.0.0.1:8080``.
        review_id: the review; default the newest open Label Studio review not pushed yet.
        project: the project title (default ``dataeng review <id>``); an existing one is reused.
        document_root: the server's ``LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT`` (default: that
            variable here, else ``/``); the images' URLs are relative to it.

    Returns:
        A :class:`PushResult`.

    Raises:
        DataEngError: no such review, not a Label Studio review, closed, already pushed, its
            folder gone; no token; no SDK.
        ServiceError: the server is down or refuses a request (also a ``service`` problem).

    Example::

        os.environ["LABEL_STUDIO_API_KEY"] = token  # in the shell, not in code
        done = push_review(ws, session, "http://127.0.0.1:8080")
        done.project_id, done.tasks
    """
    review = _review_to_push(session, review_id)
    out = Path(review.out_dir)
    tasks_file = out / labelstudio.TASKS_FILE
    for needed in (tasks_file, out / CONFIG_FILE):
        if not needed.is_file():
            raise DataEngError(f"the review's folder has no {needed.name} (moved or deleted?)", path=needed)
    config = (out / CONFIG_FILE).read_text(encoding="utf-8")
    tasks = load_json(tasks_file)
    title = project or f"dataeng review {review.id}"
    server = _Server(url)
    batch = _batch(session, "review-push", {"url": server.url, "review_id": review.id, "project": title})
    try:
        project_id, reused = _project(server, title, config)
        storage_id = _storage(server, project_id, out / labelstudio.IMAGES_DIR)
        for task in tasks:
            data = task["data"]
            data[IMAGE_TAG] = labelstudio.image_url(out / data[labelstudio.DATA_IMAGE], document_root)
        # A push that failed after the import (or a project pushed to by hand) already holds the tasks:
        # they are not imported twice.
        task_ids = _task_ids(server, project_id, review.id) if reused else {}
        if not task_ids:
            server.call(f"importing {len(tasks)} tasks into project {project_id}",
                        server.client.projects.import_tasks, project_id, request=tasks, return_task_ids=True)
            task_ids = _task_ids(server, project_id, review.id)
    except ServiceError as e:
        _failed(session, batch, e)
        raise
    items = items_of(review)
    for item in items:
        item["labelstudio_task_id"] = task_ids.get(item["n"])
    review.items = items
    review.meta = {**(review.meta or {}), "labelstudio": {
        "url": server.url, "project_id": project_id, "project": title, "storage_id": storage_id,
        "pushed_at": utcnow().isoformat()}}
    batch.status, batch.finished_at = "finished", utcnow()
    batch.summary = {"project_id": project_id, "tasks": len(task_ids)}
    session.commit()
    return PushResult(review.id, server.url, project_id, title, reused, storage_id, len(task_ids))


def _review_to_push(session: Session, review_id: int | None) -> Review:
    if review_id is None:
        candidates = session.scalars(select(Review).where(Review.format == labelstudio.NAME, Review.status == "open")
                                     .order_by(Review.id.desc()))
        review = next((r for r in candidates if not (r.meta or {}).get("labelstudio")), None)
        if review is None:
            raise DataEngError("no open Label Studio review to push; make one with "
                               "`dataeng review export OUT --format labelstudio`", field="review")
        return review
    found = session.get(Review, review_id)
    if found is None:
        raise DataEngError("no review with this id", field="review", value=review_id)
    if found.format != labelstudio.NAME:
        raise DataEngError(f"review {review_id} was exported as {found.format}; push needs --format labelstudio",
                           field="review", value=review_id)
    if found.status != "open":
        raise DataEngError("the review is closed", field="review", value=review_id)
    pushed = (found.meta or {}).get("labelstudio")
    if pushed:
        raise DataEngError(f"already pushed to project {pushed['project_id']} at {pushed['url']}; "
                           f"`dataeng review pull {review_id}` takes the annotations back", field="review",
                           value=review_id)
    return found


def _project(server: _Server, title: str, config: str) -> tuple[int, bool]:
    projects = server.client.projects
    listed: list[Any] = server.call("listing projects", lambda: list(projects.list(title=title)))
    found = [p for p in listed if p.title == title]
    if not found:
        created = server.call(f"creating project {title!r}", projects.create, title=title, label_config=config,
                              description="pre-filled masks from dataeng; take them back with `dataeng review pull`")
        return int(created.id or 0), False
    project = found[0]
    current = server.call(f"reading project {project.id}", projects.get, project.id)
    if (current.label_config or "").strip() != config.strip():
        server.call(f"updating the labelling config of project {project.id}", projects.update, project.id,
                    label_config=config)
    return int(project.id), True


def _storage(server: _Server, project_id: int, images: Path) -> int:
    local = server.client.import_storage.local
    path = str(images.resolve())
    existing = server.call("listing local storages", local.list, project=project_id)
    for storage in existing:
        if storage.path == path:
            return int(storage.id)
    created = server.call(f"adding local-files storage {path} (the server needs "
                          "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true and a LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT "
                          "above it)", local.create, project=project_id, path=path, title=STORAGE_TITLE,
                          use_blob_urls=False)
    return int(created.id)


def _task_ids(server: _Server, project_id: int, review_id: int) -> dict[int, int]:
    """Item n -> task id, for the project's tasks of this review."""
    tasks: list[Any] = server.call(f"listing the tasks of project {project_id}",
                                   lambda: list(server.client.tasks.list(project=project_id, page_size=500)))
    out = {}
    for task in tasks:
        data = task.data or {}
        if data.get(REVIEW_KEY) == review_id and isinstance(data.get(ITEM_KEY), int):
            out[int(data[ITEM_KEY])] = int(task.id)
    return out


# ---------------------------------------------------------------- pull
def pull_review(
    workspace: Workspace,
    session: Session,
    review_id: int,
    *,
    url: str | None = None,
    progress: Progress | None = None,
) -> ReviewImport:
    """Download a pushed review's annotations from Label Studio and import them.

    Args:
        url: the server (default: the one it was pushed to).

    Returns:
        The :class:`~dataeng.engine.review.importing.ReviewImport` of the downloaded export.

    Raises:
        DataEngError: no such review, or it was never pushed; no token; no SDK.
        ServiceError: the server is down or refuses a request (also a ``service`` problem).
    """
    from dataeng.engine.review.importing import import_review

    review = session.get(Review, review_id)
    if review is None:
        raise DataEngError("no review with this id", field="review", value=review_id)
    pushed = (review.meta or {}).get("labelstudio")
    if not pushed:
        raise DataEngError("the review was never pushed to Label Studio (`dataeng review push`); import a file "
                           "export with `dataeng review import FILE`", field="review", value=review_id)
    server = _Server(url or pushed["url"])
    project_id = int(pushed["project_id"])
    batch = _batch(session, "review-pull", {"url": server.url, "review_id": review_id, "project_id": project_id})
    try:
        project = server.call(f"reading project {project_id}", server.client.projects.get, project_id)
        data = server.call(f"exporting project {project_id} as JSON", lambda: b"".join(
            server.client.projects.exports.download_sync(project_id, export_type="JSON", download_all_tasks=True)))
    except ServiceError as e:
        _failed(session, batch, e)
        raise
    folder = workspace.review_dir(review_id) / "pulled" / utcnow().strftime("%Y%m%dT%H%M%S%fZ")
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / CONFIG_FILE, project.label_config or "")
    export = folder / f"project-{project_id}.json"
    pushed_ids = {i["labelstudio_task_id"] for i in items_of(review) if i.get("labelstudio_task_id") is not None}
    text, kept = _this_review(data, review_id, pushed_ids)
    atomic_write_text(export, text)
    batch.status, batch.finished_at = "finished", utcnow()
    batch.summary = {"export": str(export), "tasks": kept}
    session.commit()
    if kept == 0:
        raise DataEngError(f"project {project_id} holds no task of review {review_id} any more (deleted on the "
                           "server?); nothing to import", path=server.url, field="project", value=project_id)
    return import_review(workspace, session, export, progress=progress)


def _this_review(data: bytes, review_id: int, task_ids: set[Any]) -> tuple[str, int | None]:
    """The export's tasks of this review (a reused project holds other reviews' tasks too), as JSON text,
    and how many (None: not a list of tasks).

    A task is this review's when its ``data`` names the review, or, without our ids (edited by
    hand on the server), when it is one of the tasks the push recorded. Anything but a list of
    tasks is kept as it is, for the import to refuse with its own message.
    """
    text = data.decode("utf-8", errors="replace")
    try:
        tasks = json.loads(text)
    except ValueError:
        return text, None
    if not isinstance(tasks, list):
        return text, None

    def ours(task: Any) -> bool:
        if not isinstance(task, dict):
            return True
        inner = task.get("data")
        named = (inner if isinstance(inner, dict) else task).get(REVIEW_KEY)  # JSON, or JSON_MIN's flat rows
        return named == review_id if named is not None else task.get("id") in task_ids

    kept = [t for t in tasks if ours(t)]
    return json.dumps(kept, ensure_ascii=False), len(kept)


# ---------------------------------------------------------------- bookkeeping
def _batch(session: Session, kind: str, args: dict[str, Any]) -> Batch:
    batch = Batch(kind=kind, args=args)
    session.add(batch)
    session.commit()
    return batch


def _failed(session: Session, batch: Batch, error: ServiceError) -> None:
    session.rollback()
    session.add(Problem(batch_id=batch.id, path=error.path or "?", kind=ProblemKind.SERVICE, field=error.field,
                        value=None, message=error.reason))
    batch.status, batch.finished_at = "failed", utcnow()
    session.commit()
