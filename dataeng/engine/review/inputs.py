"""What annotators sent back, opened for ``dataeng review import``: Labelme folders, CVAT and Label Studio exports.

:func:`open_input` takes a Labelme export folder (one JSON per image), a folder holding a
CVAT ``annotations.xml``, the XML itself, a CVAT task export zip, a Label Studio JSON or
JSON_MIN export (or a folder holding one beside ``labeling_config.xml``), and yields an
:class:`Input`: one :class:`Source` per annotation (parsed with the format readers, or the
error that refused it), the manifest found in or beside it, and the problems of the
input as a whole. Nothing in a zip decides where a file is written.
"""

from __future__ import annotations

import hashlib
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from dataeng.annotation.formats import cvat, labelme, labelstudio
from dataeng.engine.review.export import CVAT_LABELS_NAME
from dataeng.engine.review.labelstudio_tasks import ITEM_KEY, REVIEW_KEY, SHA_KEY
from dataeng.engine.review.manifest import MANIFEST_NAME
from dataeng.errors import DataEngError, InputError
from dataeng.storage import file_sha256

if TYPE_CHECKING:
    from dataeng.annotation.types import ImageAnnotation

_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
_MAX_ZIP_MEMBER = 2 << 30  # annotations.xml or manifest.json bigger than this is not an export


@dataclass
class Source:
    """One annotation found in the input: a Labelme file, one CVAT ``<image>`` or one Label Studio task."""

    key: str  # Labelme: the JSON's file name; CVAT: the image's base name; Label Studio: file#task index
    path: str  # named in messages
    annotation: ImageAnnotation | None = None
    error: DataEngError | None = None
    image_sha256: Callable[[], str | None] = lambda: None
    state: str = "annotated"  # Label Studio: annotated | skipped | predicted | empty (only annotated imports)
    ids: tuple[int, int, str] | None = None  # Label Studio: (review id, item n, image sha256) from the task data


@dataclass
class Input:
    """An opened input: its annotations, the manifest to match them by, whole-input problems."""

    kind: str  # labelme | cvat | labelstudio
    sources: list[Source]
    manifest: Path | None
    problems: list[DataEngError]


@contextmanager
def open_input(path: Path, manifest: Path | None) -> Iterator[Input]:
    """Open a review import input (a zip is extracted to a temporary folder while in use).

    Raises:
        InputError: an unreadable zip, a zip without ``annotations.xml``, or a file that is
            neither a folder, a CVAT ``.xml`` nor a ``.zip``.
    """
    if path.is_file() and path.suffix.lower() == ".zip":
        try:
            zf = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as e:
            raise InputError(f"not a readable zip: {e}", path=path) from e
        with tempfile.TemporaryDirectory(prefix="dataeng-review-") as tmp, zf:
            yield _zip_input(zf, path, Path(tmp), manifest)
        return
    folder = path if path.is_dir() else path.parent
    beside = folder / MANIFEST_NAME
    manifest = manifest or (beside if beside.is_file() else None)
    problems: list[DataEngError] = []
    if path.is_file() and path.suffix.lower() == ".json" and labelstudio.detect(path):
        yield Input("labelstudio", _labelstudio_sources(path, folder, problems), manifest, problems)
        return
    if path.is_file() and path.suffix.lower() != ".xml":
        raise InputError("expected a folder, a CVAT .xml, a CVAT export .zip or a Label Studio .json export",
                         path=path)
    xml = path if path.is_file() else folder / "annotations.xml"
    if xml.is_file():
        sources = _cvat_sources(xml, folder, lambda name: _file_sha(folder, name), problems)
        yield Input("cvat", sources, manifest, problems)
        return
    exports = [p for p in sorted(folder.glob("*.json")) if p.name != MANIFEST_NAME and labelstudio.detect(p)]
    if exports:
        # The server's exports, not the tasks that were sent (those hold predictions only).
        exports = [p for p in exports if p.name != labelstudio.TASKS_FILE] or exports
        sources = [s for export in exports for s in _labelstudio_sources(export, folder, problems)]
        yield Input("labelstudio", sources, manifest, problems)
        return
    yield Input("labelme", _labelme_sources(folder), manifest, [])


def _zip_input(zf: zipfile.ZipFile, path: Path, tmp: Path, manifest: Path | None) -> Input:
    """A CVAT task export zip: its ``annotations.xml`` (and manifest), images hashed inside the zip."""
    members = [m for m in zf.infolist() if not m.is_dir()]

    def extract(name: str) -> Path | None:
        found = sorted((m for m in members if Path(m.filename).name == name), key=lambda m: len(m.filename))
        if not found:
            return None
        if found[0].file_size > _MAX_ZIP_MEMBER:
            raise InputError(f"larger than {_MAX_ZIP_MEMBER >> 30} GiB uncompressed",
                             path=f"{path}:{found[0].filename}", field="file_size", value=found[0].file_size)
        target = tmp / name  # a fixed name: nothing in the zip decides where files go
        with zf.open(found[0]) as src:
            target.write_bytes(src.read())
        return target

    xml = extract("annotations.xml")
    if xml is None:
        raise InputError("no annotations.xml in the zip; export the task as 'CVAT for images 1.1'", path=path)
    inside = extract(MANIFEST_NAME)
    beside = path.parent / MANIFEST_NAME
    manifest = manifest or inside or (beside if beside.is_file() else None)
    images = {Path(m.filename).name: m for m in members if Path(m.filename).suffix.lower() in _IMAGE_SUFFIXES}

    def sha(name: str) -> str | None:
        member = images.get(Path(name).name)
        if member is None:
            return None
        h = hashlib.sha256()
        with zf.open(member) as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()

    problems: list[DataEngError] = []
    sources = _cvat_sources(xml, tmp, sha, problems, shown=f"{path}:annotations.xml")
    return Input("cvat", sources, manifest, problems)


def _file_sha(folder: Path, name: str) -> str | None:

    base = Path(name).name
    for candidate in (folder / "images" / base, folder / base):
        if candidate.is_file():
            return file_sha256(candidate)
    return None


def _labelme_sources(folder: Path) -> list[Source]:

    sources = []
    for file in sorted(folder.glob("*.json")):
        if file.name in (MANIFEST_NAME, CVAT_LABELS_NAME):
            continue
        source = Source(file.name, str(file))
        try:
            source.annotation, _ = labelme.read_file(file, folder)
        except DataEngError as e:
            source.error = e
        else:
            image = source.annotation.image_path
            source.image_sha256 = partial(_sha256_of, image)
        sources.append(source)
    return sources


def _cvat_sources(xml: Path, root: Path, sha: Callable[[str], str | None], problems: list[DataEngError],
                  shown: str | None = None) -> list[Source]:

    try:
        result = cvat.read(xml, root=root)
    except DataEngError as e:
        problems.append(e)
        return []
    problems.extend(result.problems)
    sources = []
    for annotation in result.items:
        name = Path(annotation.image_name.replace("\\", "/")).name
        sources.append(Source(name, f"{shown or xml}:{annotation.image_name}", annotation,
                               image_sha256=partial(sha, name)))
    return sources


def _labelstudio_sources(file: Path, root: Path, problems: list[DataEngError]) -> list[Source]:

    try:
        tasks, _ = labelstudio.read_tasks(file, root)
    except DataEngError as e:
        problems.append(e)
        return []
    sources = []
    for task in tasks:
        shown = f"{file}:task {task.task_id if task.task_id is not None else f'[{task.index}]'}"
        source = Source(f"{file.name}#{task.index}", shown, task.annotation, task.error, state=task.state)
        review, item, sha = task.data.get(REVIEW_KEY), task.data.get(ITEM_KEY), task.data.get(SHA_KEY)
        if isinstance(sha, str) and len(sha) == 64:
            source.image_sha256 = partial(str, sha)
            if isinstance(review, int) and isinstance(item, int) and not isinstance(review, bool) \
                    and not isinstance(item, bool):
                source.ids = (review, item, sha)
        elif task.annotation is not None:
            source.image_sha256 = partial(_sha256_of, task.annotation.image_path)
        sources.append(source)
    return sources


def _sha256_of(path: Path | None) -> str | None:
    return file_sha256(path) if path is not None and path.is_file() else None
