"""One registry of the parts chosen by name: face restorers, face detectors, scene networks.

Each kind has a table of built-ins, ``name -> "module:attr"`` (the module is imported only
when that part is built, so importing this module, listing or resolving names imports no
torch), and an entry-point group through which installed distributions add plugins::

    [project.entry-points."face2scene.face_restorers"]
    my-ref-fr = "my_pkg.restorer:MyRestorer"

A name may carry a weights tag after a dot, timm-style ``"arch.tag"`` (``scene-embedded.v1``):
an exact name is looked up first, then its ``arch`` part. Built-ins shadow plugins of the same
name. :func:`available` lists a kind, :func:`create` builds one part, :func:`is_registered`
answers without importing anything.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from face2scene_cli.errors import ConfigError

__all__ = ["KINDS", "Kind", "KindName", "available", "create", "is_registered"]

KindName = Literal["face_restorer", "detector", "scene_net"]


@dataclass(frozen=True)
class Kind:
    """One kind of registered part.

    Attributes:
        label: what messages call it (``"face restorer"``).
        group: the entry-point group of its plugins.
        base: ``"module:Class"`` every built part must be an instance of.
        builtins: name -> ``"module:attr"`` of a class or factory (tests may put the object
            itself); mutable so a test can register a part with ``monkeypatch.setitem``.
    """

    label: str
    group: str
    base: str
    builtins: dict[str, str | Callable[..., Any]] = field(default_factory=dict)


KINDS: dict[str, Kind] = {
    "face_restorer": Kind(
        "face restorer",
        "face2scene.face_restorers",
        "face2scene_cli.restorers.face.base:FaceRestorer",
        {
            "blind": "face2scene_cli.restorers.face.blind:BlindFaceRestorer",
            "ref-guided": "face2scene_cli.restorers.face.ref_guided:RefGuidedFaceRestorer",
        },
    ),
    "detector": Kind(
        "face detector",
        "face2scene.detectors",
        "face2scene_cli.faces.base:FaceDetector",
        {
            "insightface": "face2scene_cli.faces.backends.insightface:InsightFaceDetector",
            "mtcnn": "face2scene_cli.faces.backends.mtcnn:MTCNNDetector",
            "dlib": "face2scene_cli.faces.backends.dlib:DlibDetector",
        },
    ),
    "scene_net": Kind(
        "scene network",
        "face2scene.scene_nets",
        "torch.nn:Module",
        {
            "scene-embedded": "face2scene_cli.archs.scene_net:scene_embedded",
            "scene-tiny": "face2scene_cli.archs.scene_net:scene_tiny",
            "sd-turbo": "face2scene_cli.archs.turbo:TurboSceneNet",
        },
    ),
}


def _kind(kind: str) -> Kind:
    if kind not in KINDS:
        raise ConfigError(f"unknown registry kind {kind!r}; known: {', '.join(KINDS)}")
    return KINDS[kind]


def _load(target: str) -> Any:
    """The object a ``"module:attr"`` string names (imports the module)."""
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def _plugins(group: str) -> dict[str, importlib.metadata.EntryPoint]:
    found: dict[str, importlib.metadata.EntryPoint] = {}
    for ep in importlib.metadata.entry_points(group=group):
        found.setdefault(ep.name, ep)  # the first on sys.path wins, as for imports
    return found


def _lookup(table: dict[str, Any], name: str) -> str | None:
    """The key of ``table`` that ``name`` (or its ``arch`` part before a ``.tag``) is."""
    if name in table:
        return name
    arch = name.split(".", 1)[0]
    return arch if arch in table else None


def available(kind: KindName) -> dict[str, str]:
    """Every name :func:`create` accepts for ``kind``: name -> where it comes from
    (``"built-in"``, or ``"plugin <module:attr> (<distribution> <version>)"``). Nothing is
    imported."""
    spec = _kind(kind)
    out = {name: "built-in" for name in spec.builtins}
    for name, ep in sorted(_plugins(spec.group).items()):
        if name not in out:
            dist = f" ({ep.dist.name} {ep.dist.version})" if ep.dist is not None else ""
            out[name] = f"plugin {ep.value}{dist}"
    return out


def is_registered(kind: KindName, name: str, builtin_only: bool = False) -> bool:
    """Whether :func:`create` knows ``name`` (a built-in, or a plugin unless
    ``builtin_only``); imports nothing."""
    spec = _kind(kind)
    if _lookup(spec.builtins, name) is not None:
        return True
    return not builtin_only and _lookup(_plugins(spec.group), name) is not None


def create(kind: KindName, name: str, **kwargs: Any) -> Any:
    """The ``kind`` part called ``name`` (``"arch"`` or ``"arch.tag"``), built with ``kwargs``.

    Built-ins first (their own errors propagate unchanged, e.g. a missing backend's
    NotAvailableError), then plugins: entry points of the kind's group whose object must be a
    subclass of the kind's base class or a factory returning an instance of it.

    Raises:
        ConfigError: unknown name (the message lists the available ones), or a plugin that
            fails to load or build or gives something else (the message names it).
    """
    spec = _kind(kind)
    key = _lookup(spec.builtins, name)
    if key is not None:
        target = spec.builtins[key]
        return (_load(target) if isinstance(target, str) else target)(**kwargs)
    plugins = _plugins(spec.group)
    key = _lookup(plugins, name)
    if key is None:
        raise ConfigError(
            f"unknown {spec.label} {name!r}; available: {', '.join(sorted(available(kind)))}"
        )
    ep = plugins[key]
    base = _load(spec.base)
    what = f"{spec.label} plugin {name!r} ({ep.value})"
    try:
        obj = ep.load()
    except Exception as exc:  # a plugin's import can fail in any way
        raise ConfigError(f"{what} failed to load: {type(exc).__name__}: {exc}") from exc
    if not callable(obj):
        raise ConfigError(
            f"{what} is a {type(obj).__name__}, not a {base.__name__} class or factory"
        )
    try:
        part = obj(**kwargs)
    except Exception as exc:
        raise ConfigError(f"{what} failed to build: {type(exc).__name__}: {exc}") from exc
    if not isinstance(part, base):
        raise ConfigError(
            f"{what} gave a {type(part).__name__}, not a {base.__module__}.{base.__qualname__}"
        )
    return part
