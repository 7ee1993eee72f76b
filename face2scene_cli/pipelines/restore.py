"""``f2s restore``'s job: faces -> degradation code -> scene restorer, assembled in one place.

:meth:`Face2ScenePipeline.from_pretrained` loads and wires every stage (the faces and the
degradation are read by :mod:`face2scene_cli.pipelines.reading`); the pipeline is the batch
engine's job for ``f2s restore`` and what ``eval``, ``degrade-code`` and the benchmarks call.
Nothing here prints.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from face2scene_cli.config import RestoreConfig
from face2scene_cli.degradations.estimate import MOTION_FIELDS
from face2scene_cli.engine.job import ExtraOutput, LoadedImage, Processed
from face2scene_cli.errors import ConfigError, F2SError, InputError
from face2scene_cli.faces.align import FaceAligner, estimate_similarity, ffhq_template
from face2scene_cli.faces.base import DetectedFace
from face2scene_cli.faces.detect import resolve_detector_name
from face2scene_cli.faces.gallery import Reference
from face2scene_cli.faces.paste import paste_faces
from face2scene_cli.hashing import json_sha256
from face2scene_cli.io.images import Image
from face2scene_cli.io.pixels import split_alpha
from face2scene_cli.io.tensors import from_tensor, to_tensor
from face2scene_cli.pipelines.reading import (
    MIN_IMAGE_SIDE,
    SCENE_CROPS,
    DegradationReader,
    FaceDegradation,
    FaceFinder,
    FoundFace,
    ImageDegradation,
)
from face2scene_cli.registry import create, is_registered
from face2scene_cli.restorers.deblur import Deblur
from face2scene_cli.restorers.face.base import FaceRestorer
from face2scene_cli.restorers.guard import (
    ConsistencyCheck,
    Fallback,
    GuardSettings,
    apply_fallbacks,
    check_restoration,
    noise_outside_training,
    nothing_to_restore,
    outside_training,
)
from face2scene_cli.restorers.loading import load_fadex
from face2scene_cli.restorers.scene import RestoreSettings, SceneRestorer, load_scene_restorer
from face2scene_cli.restorers.upscaler import UPSCALER_TASK, UpscaleRestorer, load_upscale_restorer
from face2scene_cli.zoo import ModelInfo, find_model, model_location


def resolve_face_restorer(name: str, with_references: bool) -> str:
    """The Stage I restorer ``name`` stands for: ``auto`` is ``ref-guided`` when that restorer
    is registered and references are given, else ``blind``; other names are kept."""
    if name != "auto":
        return name
    usable = with_references and is_registered("face_restorer", "ref-guided", builtin_only=True)
    return "ref-guided" if usable else "blind"


def blind_reason(found: FoundFace, used: int | None, refs_given: bool) -> str | None:
    """Why a face was restored without references (None when references shaped it).

    Args:
        found: the face, its match and its chosen references.
        used: the restorer's ``references_used`` for it (None: it reads no references).
        refs_given: a reference gallery was given.
    """
    if used:
        return None
    if not refs_given:
        return "no references"
    if found.match is None or found.match.person is None:
        return "unknown person"
    if not found.references:
        return "no references"
    return "references disagreed" if used == 0 else "restorer ignores references"


class Face2ScenePipeline:
    """``f2s restore`` as a batch job: faces -> degradation code -> scene restorer.

    A batch of images goes through the stages together: faces are found per image, every
    face of the batch is restored by Stage I and read by FaDeX in shared calls, each image's
    faces give one code (confidence-weighted), and the scene restorer restores each image
    with it (tiles batched). An image without a usable face gets its code from scene crops
    (``source: scene``, see :class:`~face2scene_cli.pipelines.reading.DegradationReader`);
    with ``blind``, or when nothing could be read, the scene restorer runs on its null tokens
    and the report says ``source: blind``. Optional: Stage I faces pasted
    into the output, aligned face crops and a side-by-side image written beside it. Alpha is
    carried through; gray stays gray; the dtype (8/16 bit) is kept.
    """

    command = "restore"

    def __init__(
        self,
        config: RestoreConfig,
        finder: FaceFinder,
        reader: DegradationReader,
        scene: SceneRestorer | UpscaleRestorer | None,
        models: list[ModelInfo],
    ) -> None:
        self.config = config
        self.finder = finder
        self.reader = reader
        self.scene = scene
        self.device = config.device
        self._models = [m.ref() for m in models]
        self._ref_cache: dict[Path, torch.Tensor] = {}

    @classmethod
    def from_pretrained(
        cls,
        scene_model: str | None = "scene-embedded",
        *,
        fadex: str | None = None,
        batch_size: int = 4,
        scene_crops: int = SCENE_CROPS,
        **settings: Any,
    ) -> Face2ScenePipeline:
        """Load and assemble every stage: the only place a restore pipeline is put together.

        Args:
            scene_model: zoo name of the scene restorer, or a model folder (a training run's
                export, verified by its own metadata); a model whose metadata ``task`` is
                ``super-resolution-x4`` (``realesrgan-x4plus``) runs as a blind
                :class:`~face2scene_cli.restorers.upscaler.UpscaleRestorer`; None = a
                pipeline that only reads degradations (:meth:`read_degradations`,
                ``f2s degrade-code``).
            fadex: zoo name of the FaDeX that reads the code; None = the one the scene model
                was trained with (any other is refused: the scene model reads only its codes);
                with a blind upscaler FaDeX only reads the report's estimate (default
                ``fadex-s``).
            batch_size: face crops per Stage I / FaDeX call.
            scene_crops: crops read off a photo without a usable face (0: such a photo has
                no reading and is restored blind); their side is the scene model's training
                crop.
            **settings: the other :class:`~face2scene_cli.config.RestoreConfig` fields
                (``detector``, ``device``, ``precision``, ``refs``, ``face_restorer``, ...).

        Raises:
            ConfigError: bad settings; NotAvailableError / ModelIntegrityError: a model is
            missing or its files do not match their metadata.
        """
        cfg = RestoreConfig(**settings, **({"scene_model": scene_model} if scene_model else {}))
        scene_ref = model_location(scene_model) if scene_model else None
        scene: SceneRestorer | UpscaleRestorer | None = None
        if scene_ref is not None and find_model(*scene_ref).task == UPSCALER_TASK:
            scene = load_upscale_restorer(scene_ref[0], device=cfg.device, root=scene_ref[1])
            fadex = fadex or RestoreSettings.fadex
        elif scene_ref is not None:
            scene = load_scene_restorer(scene_ref[0], device=cfg.device, root=scene_ref[1])
        wanted = scene.code_fadex if scene else None
        fadex = fadex or wanted
        if fadex is None:
            raise ConfigError("a pipeline without a scene model needs fadex= to read codes")
        if wanted is not None and fadex != wanted:
            raise ConfigError(f"{scene_model} was trained on the codes of {wanted}, not {fadex}")
        refs_given = cfg.refs is not None
        restorer: FaceRestorer = create(
            "face_restorer", resolve_face_restorer(cfg.face_restorer, refs_given)
        )
        finder = FaceFinder.from_settings(cfg, device=cfg.device)
        side = getattr(scene, "code_crop_side", None)
        reader = DegradationReader(
            load_fadex(fadex),
            restorer,
            device=cfg.device,
            batch_size=batch_size,
            scene_crops=scene_crops,
            **({"scene_crop_side": side} if side else {}),
        )
        refs = [(fadex, None), *([scene_ref] if scene_ref else [])]
        if resolve_detector_name(cfg.detector) == "mtcnn":
            refs.insert(0, ("mtcnn", None))
        # Each loader above verified its model's files; the report names them from metadata.
        return cls(cfg, finder, reader, scene, [find_model(*r) for r in refs])

    def settings(self) -> dict[str, Any]:
        """Every :class:`RestoreConfig` field, with ``refs`` replaced by a hash of the
        references it holds and ``face_restorer`` by the restorer ``auto`` resolved to, and
        how a photo without a face is read (``scene_crops``: count and side, px)."""
        reader = self.reader
        return dataclasses.asdict(self.config) | {
            "refs": self._gallery_key(),
            "face_restorer": reader.restorer.method,
            "scene_crops": [reader.scene_crops, reader.scene_crop_side],
        }

    def models(self) -> list[dict[str, str]]:
        return self._models

    def warnings(self) -> list[str]:
        """The reference gallery's warnings (files skipped, photos without a usable face, the
        same photo under two people), each prefixed with ``--refs``: once per run, as
        ``f2s faces`` shows them."""
        gallery = self.finder.gallery
        return [f"--refs {w}" for w in gallery.warnings] if gallery is not None else []

    def _gallery_key(self) -> str | None:
        """sha256 of the reference photos (path + content), the encoder and ``refs_k``: the
        references a face gets, and so its Stage I output, depend on them."""
        gallery = self.finder.gallery
        if gallery is None:
            return None
        refs = [(r.person, r.path, r.sha256) for r in gallery.references]
        return json_sha256({"refs": refs, "encoder": gallery.encoder.name, "k": self.finder.refs_k})

    def read_degradations(
        self, images: list[np.ndarray]
    ) -> tuple[list[list[FoundFace]], list[ImageDegradation], list[dict[str, float]]]:
        """Find each image's faces and read its degradation off them (Stage I + FaDeX over
        every face of the batch at once; off scene crops for an image without a face).

        Args:
            images: (H, W, C) uint8/uint16 pixels, C in {1, 3, 4} (alpha is ignored).

        Returns:
            Per image: its faces, its degradation reading, its stage timings (seconds).

        Raises:
            InputError: an image has a side under :data:`MIN_IMAGE_SIDE` px.
        """
        for pixels in images:
            h, w = pixels.shape[:2]
            if min(h, w) < MIN_IMAGE_SIDE:
                raise InputError(
                    f"{w}x{h} px is too small to read or restore: at least {MIN_IMAGE_SIDE} px "
                    "on each side"
                )
        timings: list[dict[str, float]] = [{} for _ in images]
        colours = [split_alpha(pixels)[0] for pixels in images]
        found = []
        for colour, t in zip(colours, timings, strict=True):
            t0 = time.perf_counter()
            found.append(self.finder.find(colour))
            t["faces"] = time.perf_counter() - t0
        gallery = self.finder.gallery
        jobs = [
            (c, [f.face for f in faces], self._references(faces) if gallery else None)
            for c, faces in zip(colours, found, strict=True)
        ]
        # the gallery's embeddings of the references spare the identity gate re-embedding
        # them, when the restorer's gate uses the same encoder
        same_encoder = gallery is not None and (
            self.reader.restorer.identity_encoder == gallery.encoder.name
        )
        embeddings = (
            [[_stacked_embeddings(f.references) for f in faces] for faces in found]
            if same_encoder
            else None
        )
        readings, read_times = self.reader.read_batch(jobs, embeddings)
        for t, read in zip(timings, read_times, strict=True):
            t.update(read)
        return found, readings, timings

    def process(self, batch: list[LoadedImage], seed: int) -> list[Processed | F2SError]:
        if self.scene is None:
            raise ConfigError("this pipeline only reads degradations: it has no scene model")
        found, readings, timings = self.read_degradations([b.image.pixels for b in batch])
        return [
            self._finish(loaded, faces, reading, t)
            for loaded, faces, reading, t in zip(batch, found, readings, timings, strict=True)
        ]

    def _references(self, faces: list[FoundFace]) -> list[list[torch.Tensor]]:
        """Per face, its chosen references' aligned crops (3, S, S) in [0, 1], read once."""
        out = []
        for face in faces:
            crops = []
            for ref in face.references:
                if ref.crop_path not in self._ref_cache:
                    self._ref_cache[ref.crop_path] = to_tensor(ref.crop())[0]
                crops.append(self._ref_cache[ref.crop_path])
            out.append(crops)
        return out

    def _finish(
        self,
        loaded: LoadedImage,
        found: list[FoundFace],
        reading: ImageDegradation,
        timings: dict[str, float],
    ) -> Processed:
        cfg = self.config
        image = loaded.image
        colour, alpha = split_alpha(image.pixels)
        read = reading.readings
        use_code = bool(read) and not cfg.blind and self.scene.code_fadex is not None
        t0 = time.perf_counter()
        tokens = None
        if use_code:
            tokens = self.scene.tokens_for_crops([r.z for r in read], [r.weight for r in read])
        t1 = time.perf_counter()
        tile, precision = self.scene.run_settings(cfg.tile, cfg.precision)
        retries = self.scene.fp32_retries
        out, check, fallbacks, deblurred = restore_checked(
            colour,
            reading,
            tokens,
            self.scene.guard,
            cfg.scale,
            lambda x, t: self.scene.restore(
                x, t, tile=tile, precision=precision, scale=cfg.scale, noise=reading.noise_curve
            ),
            self.scene.deblur,
        )
        scene_run = {
            "tile": tile,
            "precision": precision,
            "fp32_retries": self.scene.fp32_retries - retries,
            "check": None if check is None else check.to_report(),
            "fallback": [f.to_report() for f in fallbacks],
            "deblur": deblurred,
        }
        t2 = time.perf_counter()
        timings.update({"mapnet": t1 - t0, "scene": t2 - t1})
        kept = out is colour  # restore_checked hands the input itself back only when kept
        notes = [_fallback_warning(f) for f in fallbacks]
        if cfg.paste_faces and reading.faces and kept:
            notes.append("--paste-faces: no Stage I face pasted on a photo kept as it is")
        elif cfg.paste_faces and reading.faces:
            out = paste_stage1_faces(out, reading.faces, cfg.scale)
            timings["paste"] = time.perf_counter() - t2
        if alpha is not None:
            alpha = _resize_to(alpha, out.shape[:2], cv2.INTER_LINEAR)
            out = np.concatenate([out, alpha], axis=-1)
        extras = self._extras(loaded, out, colour, reading, timings)
        return Processed(
            image.with_pixels(out),
            self._fields(found, reading, use_code) | {"scene": scene_run},
            timings,
            self._blind_warnings(reading) + self._range_warnings(reading, use_code) + notes,
            extras,
        )

    def _blind_warnings(self, reading: ImageDegradation) -> list[str]:
        """Why the scene restorer ran blind on an image (nothing when its code was used)."""
        if self.scene.code_fadex is None:
            return [
                f"{self.config.scene_model} takes no degradation code: the scene was restored "
                "blind (the faces' degradation is estimated for the report only)"
            ]
        if reading.readings or self.config.blind:
            return []
        return ["no usable face (and no scene crops read): restored in blind mode"]

    def _range_warnings(self, reading: ImageDegradation, use_code: bool) -> list[str]:
        """What the faces (or scene crops), and the photo's noise per brightness band, read
        beyond the scene model's training degradations."""
        envelope = self.scene.trained_envelope
        if envelope is None:
            return []
        model, out = self.config.scene_model, []
        beyond = (
            outside_training(reading.estimates, envelope)
            if use_code and reading.estimates is not None
            else []
        )
        if beyond:
            what = "faces" if reading.faces else "scene crops"
            out.append(
                f"the {what} read a degradation beyond what {model} was trained on "
                f"({'; '.join(beyond)}): expect less restoration"
            )
        band = (
            None
            if reading.noise_curve is None
            else noise_outside_training(reading.noise_curve, envelope)
        )
        if band is not None:
            out.append(
                f"the photo's noise goes beyond what {model} was trained on ({band}): expect "
                "noise left at that brightness"
            )
        return out

    def _fields(
        self, found: list[FoundFace], reading: ImageDegradation, use_code: bool
    ) -> dict[str, Any]:
        by_index = {r.index: r for r in reading.faces}
        refs_given = self.finder.gallery is not None
        faces = []
        for i, item in enumerate(found):
            r = by_index.get(i)
            entry = item.to_report()
            entry["restorer"] = r.restorer if r else None
            entry["references_used"] = r.references_used if r else None
            entry["blind_reason"] = blind_reason(item, r.references_used, refs_given) if r else None
            entry["weight"] = round(r.weight, 4) if r else None
            faces.append(entry)
        unread = ("noise_sigma", "blur_sigma_px", "jpeg_quality", "downscale", *MOTION_FIELDS)
        degradation = reading.to_report() or dict.fromkeys(unread, None) | {"code": []}
        if not use_code:
            degradation["source"] = "blind"  # null tokens, or a restorer that reads no code
        degradation["noise_curve"] = reading.noise_curve_report()
        return {"faces": faces, "degradation": degradation}

    def _extras(
        self,
        loaded: LoadedImage,
        out: np.ndarray,
        colour: np.ndarray,
        reading: ImageDegradation,
        timings: dict[str, float],
    ) -> list[ExtraOutput]:
        """The ``--save-faces`` crops and the ``--save-compare`` image, to be written beside
        the output."""
        t0 = time.perf_counter()
        output = loaded.item.output
        extras = []
        if self.config.save_faces and reading.faces:
            folder = output.with_name(output.stem + ".faces")
            pairs = aligned_face_pairs(colour, reading.faces)
            for f, (lq, hq) in zip(reading.faces, pairs, strict=True):
                name = f"face{f.index}"  # its index in the report's faces[]
                extras.append(ExtraOutput(folder / f"{name}_lq.png", Image(lq, "PNG"), "png"))
                extras.append(ExtraOutput(folder / f"{name}_hq.png", Image(hq, "PNG"), "png"))
        if self.config.save_compare:
            before = _resize_to(loaded.image.pixels, out.shape[:2], cv2.INTER_NEAREST)
            side = loaded.image.with_pixels(np.concatenate([before, out], axis=1))
            path = output.with_name(output.stem + ".compare" + output.suffix)
            extras.append(ExtraOutput(path, side, loaded.item.format))
        if extras:
            timings["extras"] = time.perf_counter() - t0
        return extras


def restore_checked(
    colour: np.ndarray,
    reading: ImageDegradation,
    tokens: torch.Tensor | None,
    guard: GuardSettings | None,
    scale: int,
    run: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor],
    deblur: Deblur | None = None,
) -> tuple[np.ndarray, ConsistencyCheck | None, list[Fallback], dict[str, Any] | None]:
    """What ``f2s restore`` makes of a photo: the scene restored on ``tokens`` (None: blind)
    and checked against the reading, with its fallbacks applied; ``colour`` itself, not
    converted, where the reading says there is nothing to restore (at scale 1).

    Args:
        colour: the input's pixels without alpha, (H, W, C) uint8/uint16, C in {1, 3}.
        reading: its reading (estimates, noise curve, the faces' crop boxes).
        tokens: the code's tokens, None for a blind restoration (no check then).
        guard: the scene model's check and clean limits; None: no check.
        scale: output size over input size.
        run: the scene restorer, ``(lq (1, C, H, W) in [0, 1], tokens or None) -> (1, C, sH,
            sW) in [0, 1]``.
        deblur: takes a read blur off a restoration on the code at scale 1, before the check
            (which re-degrades by the read blur, a stated motion by its kernel); None: it
            stays.

    Returns:
        The output (sH, sW, C) with ``colour``'s dtype, the check (None when not run), the
        fallbacks taken, and the deconvolution the output holds (:meth:`Deblur.plan`'s
        report; None when none, or when the photo fell back).
    """
    estimate = None if tokens is None else reading.estimates
    checked = guard is not None and estimate is not None
    if checked and guard.clean is not None and scale == 1:
        kept = nothing_to_restore(estimate, reading.noise_curve, guard.clean)
        if kept is not None:
            return colour, None, [kept], None
    lq = to_tensor(colour)
    restored = run(lq, tokens)
    deblurred = None
    if deblur is not None and estimate is not None and scale == 1:
        restored, deblurred = deblur(restored, estimate)
    check, fallbacks = None, []
    if checked:
        boxes = {f.index: f.crop_box for f in reading.faces}
        check, fallbacks = check_restoration(lq, restored, estimate, list(boxes.items()), guard)
        if fallbacks and not reading.faces:  # a scene-crop code failed: the null code instead
            fallbacks = [dataclasses.replace(f, to="blind") for f in fallbacks]
            restored, deblurred = run(lq, None), None
        else:
            restored = apply_fallbacks(restored, lq, fallbacks, boxes)
            if any(f.region == "photo" for f in fallbacks):
                deblurred = None
    return from_tensor(restored, colour.dtype), check, fallbacks, deblurred


def _fallback_warning(fallback: Fallback) -> str:
    where = "the photo" if fallback.region == "photo" else f"face {fallback.face}"
    if fallback.to == "blind":
        return f"{where} was restored blind (its scene-crop code failed): {fallback.reason}"
    return f"{where} fell back to the input: {fallback.reason}"


def _resize_to(pixels: np.ndarray, size: tuple[int, ...], interpolation: int) -> np.ndarray:
    """(H, W, C) pixels at ``size`` = (h, w); the same array when the size already fits."""
    if pixels.shape[:2] == size:
        return pixels
    out = cv2.resize(pixels, (size[1], size[0]), interpolation=interpolation)
    return out.reshape(*size, pixels.shape[2])


def _hq_canvas(base: np.ndarray, faces: list[FaceDegradation], scale: int) -> np.ndarray:
    """``base`` (at ``scale`` x the faces' coordinates) with each face's native crop replaced
    by its Stage I output (bicubic-upscaled by ``scale``)."""
    canvas = base.copy()
    for f in faces:
        hq = from_tensor(f.hq, base.dtype)
        x0, y0, x1, y1 = (v * scale for v in f.crop_box)
        if scale > 1:
            hq = cv2.resize(hq, (x1 - x0, y1 - y0), interpolation=cv2.INTER_CUBIC)
        canvas[y0:y1, x0:x1] = hq.reshape(y1 - y0, x1 - x0, base.shape[2])
    return canvas


def _stacked_embeddings(references: list[Reference]) -> np.ndarray | None:
    """(len(references), D) float32 of the references' gallery embeddings; None for none."""
    return np.stack([r.embedding for r in references]) if references else None


def _scaled(face: DetectedFace, scale: int) -> DetectedFace:
    if scale == 1:
        return face
    lm68 = None if face.landmarks68 is None else face.landmarks68 * scale
    return replace(face, box=face.box * scale, landmarks=face.landmarks * scale, landmarks68=lm68)


def _aligner_for(face: DetectedFace, max_size: int = 1024) -> FaceAligner:
    """An FFHQ aligner whose frame keeps the face at about its own resolution (>= 128 px)."""
    m = estimate_similarity(np.asarray(face.landmarks, np.float64), ffhq_template(512))
    scale = 1.0 / np.sqrt(abs(np.linalg.det(m[:, :2])))  # source px per 512-frame px
    return _aligner(int(np.clip(round(512 * scale / 16) * 16, 128, max_size)))


@functools.lru_cache(maxsize=16)
def _aligner(size: int) -> FaceAligner:
    return FaceAligner(size)


def paste_stage1_faces(out: np.ndarray, faces: list[FaceDegradation], scale: int) -> np.ndarray:
    """Blend the Stage I faces into the restored photo (soft face mask, colour matched).

    Args:
        out: the scene restorer's output (H*s, W*s, C) uint8/uint16, C in {1, 3}.
        faces: the image's readings (their ``hq`` crops are pasted).
        scale: s, the output's size over the input's.

    Returns:
        A new array like ``out``; each face keeps Stage I's detail and takes ``out``'s
        low-frequency colour (see :func:`face2scene_cli.faces.paste.paste_faces`).
    """
    canvas = _hq_canvas(out, faces, scale)
    targets = [_scaled(f.face, scale) for f in faces]
    aligners = [_aligner_for(t) for t in targets]
    aligned_out = [a.align(out, t) for a, t in zip(aligners, targets, strict=True)]
    aligned_hq = [a.align(canvas, t).crop for a, t in zip(aligners, targets, strict=True)]
    return paste_faces(out, aligned_hq, aligned_out)


def aligned_face_pairs(
    colour: np.ndarray, faces: list[FaceDegradation], size: int = 512
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per face, its LQ and Stage I HQ crops aligned to the FFHQ template at ``size``.

    Args:
        colour: the input's pixels without alpha, (H, W, C) uint8/uint16, C in {1, 3}.
        faces: the image's readings.

    Returns:
        (lq, hq) pairs of (size, size, C) arrays with ``colour``'s dtype.
    """
    canvas = _hq_canvas(colour, faces, 1)
    aligner = _aligner(size)
    pairs = []
    for f in faces:
        lq, hq = aligner.align(colour, f.face).crop, aligner.align(canvas, f.face).crop
        pairs.append((lq.reshape(size, size, -1), hq.reshape(size, size, -1)))
    return pairs
