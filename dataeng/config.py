"""Typed configuration: the pydantic models of ``dataeng.toml``.

Every section forbids unknown keys, so a typo is refused with the key named instead of
silently ignored. The resolved config is stored with each run.

Example::

    config = load_config(Path("ws/dataeng.toml"))
    config.classes          # ["person"]
    config.train.epochs     # 20
"""

from __future__ import annotations

import math
import tomllib
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from dataeng.annotation.types import BACKGROUND_LABELS, IGNORE_LABEL
from dataeng.errors import ConfigError

CONFIG_FILE = "dataeng.toml"
DEFAULT_REGISTRY_URL = "sqlite:///registry.db"

RESERVED_LABELS = (IGNORE_LABEL, *BACKGROUND_LABELS)
"""Label names with a fixed meaning in every format: never a class or an alias."""

SectionT = TypeVar("SectionT", bound=BaseModel)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SplitConfig(_Section):
    """How images are assigned to train/val/test."""

    ratios: tuple[float, float, float] = (0.7, 0.2, 0.1)
    salt: str = Field(default="", description="mixed into the split hash; change it only before the first ingest")

    @field_validator("ratios")
    @classmethod
    def _ratios_sum_to_one(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(not math.isfinite(r) or r < 0 for r in v) or abs(sum(v) - 1.0) > 1e-6:
            raise ValueError(f"split ratios must be >= 0 and sum to 1, got {list(v)}")
        return v


class IngestConfig(_Section):
    """Ingest behaviour: near-duplicate radius, workers, link mode."""

    near_duplicate_distance: int = Field(default=8, ge=0, le=16)
    workers: int = Field(default=0, ge=0, description="0 = one per CPU core")
    link: Literal["hardlink", "copy"] = "hardlink"
    max_image_pixels: int = Field(default=178_956_970, ge=1, description="PIL's decompression-bomb limit")


class TrainConfig(_Section):
    """Model and training defaults; every field can be overridden on the command line."""

    arch: str = "unet"
    encoder: str = "resnet18"
    encoder_weights: str = "none"
    encoder_depth: int = Field(default=5, ge=3, le=5, description="encoder stages; 3 makes a tiny model")
    image_size: tuple[int, int] = (256, 256)
    epochs: int = Field(default=20, ge=1)
    batch_size: int = Field(default=8, ge=1)
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=1e-4, ge=0)
    warmup_epochs: float = Field(default=1.0, ge=0)
    loss: Literal["segmentation", "matting"] = "segmentation"
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    num_workers: int = Field(default=2, ge=0)
    seed: int = 0
    strong_augment: bool = False
    val_every: int = Field(default=0, ge=0, description=(
        "validate and keep the checkpoint after each epoch that brings the train images seen since the last "
        "validation to at least this many (and after the last epoch); 0 validates every epoch. Set it when "
        "epochs are tiny (a few labelled images and a large sample budget)"))
    human_share: float = Field(default=0.5, ge=0, le=1, description=(
        "when the train set holds pseudo-labels, at least this share of each epoch's draws are human-labelled "
        "images (drawn again as needed, as semi-supervised methods batch labelled and unlabelled data apart); "
        "0 draws every label equally"))
    pseudo_targets: Literal["hard", "soft"] = Field(default="hard", description=(
        "what a one-class model learns from a pseudo-label: `hard` = the teacher's class, each pixel weighted by "
        "its confidence; `soft` = the teacher's probability itself (distillation, binary BCE and Dice on soft "
        "targets; pixels the pseudo-label dropped stay ignored)"))
    warm_start: bool = Field(default=False, description=(
        "a round's student starts from its teacher's weights when the teacher is a dataeng run of the same "
        "arch, encoder, depth and classes (else from scratch, said in its log): each round adds to the "
        "training already spent instead of starting over, which is what a compute-bound CPU budget needs; "
        "off, every student starts afresh (Noisy Student), which suits long GPU budgets"))
    semi: Literal["none", "fixmatch", "unimatch"] = Field(default="none", description=(
        "online semi-supervised training on the train split's unlabelled images (no active label; pseudo-labels "
        "awaiting review count as unlabelled): each step the weak view's confident prediction supervises "
        "strong views. `fixmatch`: one strong view (colour, blur, CutMix); `unimatch`: two strong views plus "
        "a feature-perturbed stream (dropout on the encoder features before the decoder)"))
    semi_threshold: float = Field(default=0.95, gt=0, le=1, description=(
        "a weak-view pixel supervises the strong views when its confidence is at least this"))
    semi_ratio: float = Field(default=1.0, gt=0, le=8, description=(
        "unlabelled images per step, as a multiple of batch_size"))
    semi_weight: float = Field(default=1.0, ge=0, description=(
        "weight of the unlabelled loss against the labelled one (the papers average the two: the same under "
        "AdamW)"))
    semi_fp_weight: float = Field(default=0.5, ge=0, le=1, description=(
        "unimatch: share of the unlabelled loss from the feature-perturbed stream; the two strong views share "
        "the rest"))
    semi_fp_dropout: float = Field(default=0.5, ge=0, lt=1, description=(
        "unimatch: channel dropout (Dropout2d) applied to the encoder features of the feature-perturbed stream"))
    semi_cutmix: float = Field(default=0.5, ge=0, le=1, description=(
        "probability that a strong view gets a CutMix box from another unlabelled image of the batch"))

    @field_validator("image_size")
    @classmethod
    def _multiple_of_32(cls, v: tuple[int, int]) -> tuple[int, int]:
        if any(s <= 0 or s % 32 for s in v):
            raise ValueError(f"image_size must be positive multiples of 32, got {list(v)}")
        return v


class AcceptConfig(_Section):
    """An image's pseudo-label is accepted when all three scores pass."""

    min_confident_fraction: float = Field(default=0.7, ge=0, le=1)
    min_mean_confidence: float = Field(default=0.85, ge=0, le=1)
    min_stability: float = Field(default=0.8, ge=0, le=1)


class PseudolabelConfig(_Section):
    """Teacher inference and confidence filtering."""

    pixel_threshold: float = Field(default=0.95, gt=0, le=1)
    tta: Literal["flip", "none"] = "flip"
    stability_delta: float = Field(default=0.1, gt=0, lt=0.5)
    batch_size: int = Field(default=8, ge=1)
    claim_size: int = Field(default=256, ge=1, description=(
        "images a worker claims from the shared queue at a time (see `dataeng pseudolabel` under torchrun)"))
    lease_s: float = Field(default=120.0, gt=0, description=(
        "a claimed chunk is free again this long after its worker's last heartbeat (a killed worker on "
        "another machine); the heartbeat renews it every lease_s / 3"))
    accept: AcceptConfig = AcceptConfig()


class ReviewConfig(_Section):
    """How pre-fills sent to annotators are traced (Labelme and CVAT polygons), see
    ``dataeng.annotation.trace.TraceLimits``; exports of labels stay exact."""

    min_region_fraction: float = Field(default=0.001, ge=0, lt=1, description=(
        "islands and holes smaller than this share of the image are left out of a pre-fill "
        "(0.001 = 65 px at 256x256), and so are ignore specks (they take what surrounds them)"))
    simplify_fraction: float = Field(default=0.0025, ge=0, lt=1, description=(
        "polygon simplification tolerance as a share of the image's longer side (2.6 px at 1024)"))
    max_vertices: int = Field(default=400, ge=3, description=(
        "the most polygon vertices per class and image; simplification coarsens until the polygons fit"))
    min_iou: float = Field(default=0.98, ge=0, le=1, description=(
        "the IoU a pre-fill keeps with its pre-label (outside its ignore pixels); it wins over the other limits"))


class RegistryConfig(_Section):
    """Where the registry lives: an SQLAlchemy URL (see :mod:`dataeng.db.url`)."""

    url: str = Field(default=DEFAULT_REGISTRY_URL, description=(
        "`sqlite:///registry.db` (relative paths are inside the workspace) or "
        "`postgresql+psycopg://user@host[:port]/db`; the password comes from $PGPASSWORD or ~/.pgpass, never "
        "from this file"))


class StoreConfig(_Section):
    """Where images, masks, alpha mattes and confidence maps are kept."""

    root: str = Field(default="store", description=(
        "a folder, relative to the workspace or absolute (a shared mount: NFS or similar); the registry keeps "
        "paths relative to it, so machines that mount it at different places share one registry"))


class Config(_Section):
    """The whole of ``dataeng.toml``."""

    classes: list[str] = ["person"]
    aliases: dict[str, str] = {}
    db_url: str | None = Field(default=None, description="deprecated spelling of [registry] url")
    registry: RegistryConfig = RegistryConfig()
    store: StoreConfig = StoreConfig()
    split: SplitConfig = SplitConfig()
    ingest: IngestConfig = IngestConfig()
    train: TrainConfig = TrainConfig()
    pseudolabel: PseudolabelConfig = PseudolabelConfig()
    review: ReviewConfig = ReviewConfig()

    @field_validator("classes")
    @classmethod
    def _classes_valid(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("at least one class is needed")
        if len(set(v)) != len(v):
            raise ValueError(f"class names must be unique, got {v}")
        if len(v) > 254:
            raise ValueError("at most 254 classes fit a uint8 mask")
        if any(not c.strip() for c in v):
            raise ValueError("class names must not be empty")
        reserved = [c for c in v if c in RESERVED_LABELS]
        if reserved:
            raise ValueError(f"{reserved[0]!r} is a reserved label name ({', '.join(RESERVED_LABELS)}: ignore and "
                             "background), not a class")
        return v

    @property
    def registry_url(self) -> str:
        """The registry URL in force: ``[registry] url``, or the older top-level ``db_url``."""
        return self.db_url if self.db_url is not None else self.registry.url

    @model_validator(mode="after")
    def _one_registry_url(self) -> Config:
        if self.db_url is not None and self.registry.url != DEFAULT_REGISTRY_URL:
            raise ValueError("db_url is the older spelling of [registry] url: set only [registry] url")
        return self

    @model_validator(mode="after")
    def _aliases_target_classes(self) -> Config:
        for alias, target in self.aliases.items():
            if alias in RESERVED_LABELS:
                raise ValueError(f"alias {alias!r} is a reserved label name ({', '.join(RESERVED_LABELS)})")
            if target not in self.classes:
                raise ValueError(f"alias {alias!r} points at {target!r}, which is not in classes {self.classes}")
        return self


def parse_config(data: dict[str, Any], source: str = CONFIG_FILE) -> Config:
    """Validate a parsed TOML mapping.

    Raises:
        ConfigError: naming the file, the key path and the value of the first problem.
    """
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            raise ConfigError("unknown key", path=source, field=field) from e
        raise ConfigError(err["msg"], path=source, field=field or None, value=err.get("input")) from e


def with_overrides(model: type[SectionT], base: BaseModel, overrides: dict[str, Any] | None, section: str
                   ) -> SectionT:
    """``base``'s values, then the non-None ``overrides`` (nested dicts merge into nested sections),
    validated as ``model``: the one place command-line and per-call options meet dataeng.toml.

    Example::

        options = with_overrides(PseudolabelConfig, config.pseudolabel, {"tta": "none",
                                 "accept": {"min_stability": 0.9}}, "pseudolabel")

    Raises:
        ConfigError: an unknown option or an invalid value, naming ``section.key`` and the value.
    """
    data = _merge(base.model_dump(), overrides or {})
    try:
        return model.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        message = "unknown option" if err["type"] == "extra_forbidden" else err["msg"]
        raise ConfigError(message, field=f"{section}.{field}", value=err.get("input")) from e


def _merge(data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    out = dict(data)
    for key, value in overrides.items():
        if value is None:
            continue
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def load_config(path: Path) -> Config:
    """Read and validate ``dataeng.toml``.

    Raises:
        ConfigError: file missing, not TOML, or invalid.
    """
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ConfigError("config file not found", path=path) from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"not UTF-8 text (byte {e.start}: {e.object[e.start:e.start + 1]!r})", path=path) from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"not valid TOML: {e}", path=path) from e
    return parse_config(data, str(path))


def render_config(config: Config) -> str:
    """Write a config as TOML (only the values that differ from nothing: all of them, commented)."""
    d = config.model_dump(mode="json", exclude_none=True)
    lines = ["# dataeng workspace configuration; unknown keys are refused.", ""]
    top = {k: v for k, v in d.items() if not isinstance(v, dict) or k == "aliases"}
    for key, value in top.items():
        lines.append(f"{key} = {_toml_value(value)}")
    for section, body in d.items():
        if isinstance(body, dict) and section != "aliases":
            lines += _toml_table(section, body)
    return "\n".join(lines) + "\n"


def _toml_table(name: str, body: dict[str, Any]) -> list[str]:
    out = ["", f"[{name}]"]
    nested = []
    for key, value in body.items():
        if isinstance(value, dict):
            nested.append((f"{name}.{key}", value))
        else:
            out.append(f"{key} = {_toml_value(value)}")
    for sub, sub_body in nested:
        out += _toml_table(sub, sub_body)
    return out


def _toml_value(value: Any) -> str:
    import json

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot render {value!r} as TOML")
