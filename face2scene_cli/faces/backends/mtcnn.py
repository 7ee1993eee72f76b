"""MTCNN (Zhang et al. 2016): a P-Net / R-Net / O-Net cascade that finds faces with 5 points.

Our own implementation of facenet-pytorch 2.6.0's MTCNN in pure torch + numpy (no
torchvision): the three networks use facenet-pytorch's parameter names, so its state dicts
(converted to safetensors by ``scripts/convert_mtcnn.py``) load strictly, and
:func:`detect_faces` follows ``facenet_pytorch.models.utils.detect_face`` step by step:

1. image pyramid: scales ``12 / min_face * factor**k`` while the shorter side stays >= 12 px,
   each level resized with area interpolation;
2. P-Net on every level -> candidate windows (score >= thresholds[0]) -> NMS 0.5 per level ->
   NMS 0.7 over all levels -> box regression -> square boxes;
3. R-Net on 24x24 crops (one batch) -> score > thresholds[1] -> NMS 0.7 -> regression ->
   square boxes;
4. O-Net on 48x48 crops (one batch) -> score > thresholds[2] -> 5 landmarks -> regression ->
   NMS 0.7 with the "min" overlap.

Pixels are normalised as ``(x - 127.5) * 0.0078125``; crops of boxes that leave the image are
cut at the border and resized (facenet-pytorch's behaviour, not the original zero padding).
The networks run channels-last (2-5x faster on CPU than NCHW for these thin layers). Memory:
the image is held once as float32 (12 bytes per pixel) on the model's device.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from face2scene_cli.archs.mtcnn import ONet, PNet, RNet
from face2scene_cli.errors import ConfigError, ModelIntegrityError
from face2scene_cli.faces.base import DetectedFace, FaceDetector
from face2scene_cli.faces.detect import as_rgb_uint8
from face2scene_cli.zoo import ModelFiles, check_state_dict, require_model

logger = logging.getLogger(__name__)

__all__ = [
    "MTCNN",
    "MTCNNConfig",
    "MTCNNDetector",
    "MTCNNOutput",
    "box_crops",
    "crop_resize",
    "detect_faces",
    "nms",
    "refine_landmarks",
]

CONFIG_NAME = "config.json"
WEIGHT_NAMES = {"pnet": "pnet.safetensors", "rnet": "rnet.safetensors", "onet": "onet.safetensors"}
_MEAN = 127.5
_SCALE = 0.0078125  # 1 / 128


# --------------------------------------------------------------------------- config / model


@dataclass(frozen=True)
class MTCNNConfig:
    """Detection settings stored in ``config.json`` (facenet-pytorch's defaults).

    Attributes:
        thresholds: face-probability thresholds of P-Net, R-Net and O-Net.
        factor: scale step of the image pyramid.
        nms_pnet_level: IoU threshold of the NMS within one pyramid level.
        nms_pnet: IoU threshold of the NMS over all levels.
        nms_rnet: IoU threshold after R-Net.
        nms_onet: overlap threshold (intersection over the smaller box) after O-Net.
        batch_size: most crops per R-Net / O-Net forward pass.
    """

    thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7)
    factor: float = 0.709
    nms_pnet_level: float = 0.5
    nms_pnet: float = 0.7
    nms_rnet: float = 0.7
    nms_onet: float = 0.7
    batch_size: int = 512
    architecture: str = field(default="mtcnn", repr=False)

    def __post_init__(self) -> None:
        if len(self.thresholds) != 3 or not all(0.0 <= t <= 1.0 for t in self.thresholds):
            raise ValueError(f"thresholds must be 3 values in [0, 1], got {self.thresholds}")
        if not 0.0 < self.factor < 1.0:
            raise ValueError(f"factor must be in (0, 1), got {self.factor}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")

    @classmethod
    def from_json(cls, path: Path) -> MTCNNConfig:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")), str(path))

    @classmethod
    def from_dict(cls, raw: dict, where: str = "") -> MTCNNConfig:
        """From the parsed ``config.json`` (ValueError on an unknown key or a bad value)."""
        raw = dict(raw)
        raw["thresholds"] = tuple(raw.get("thresholds", cls.thresholds))
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(raw) - known)
        if unknown:
            prefix = f"{where}: " if where else ""
            raise ValueError(f"{prefix}unknown MTCNN config key(s) {', '.join(unknown)}")
        return cls(**raw)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"


@dataclass(frozen=True)
class MTCNNOutput:
    """Faces found in one image.

    Attributes:
        boxes: (N, 4) float32 ``x0, y0, x1, y1`` in source pixels (may extend past the image).
        scores: (N,) float32 O-Net face probabilities, descending.
        landmarks: (N, 5, 2) float32 ``x, y``: eye, eye, nose, mouth corner, mouth corner
            (image-left before image-right).
    """

    boxes: np.ndarray
    scores: np.ndarray
    landmarks: np.ndarray


class MTCNN(nn.Module):
    """The three MTCNN networks and their detection settings.

    Args:
        config: thresholds, pyramid factor and NMS settings (:class:`MTCNNConfig`).
    """

    def __init__(self, config: MTCNNConfig | None = None) -> None:
        super().__init__()
        self.config = config or MTCNNConfig()
        self.pnet = PNet()
        self.rnet = RNet()
        self.onet = ONet()
        # channels-last convolutions are 2-5x faster on CPU for these few-channel networks
        self.to(memory_format=torch.channels_last)
        self.eval()

    @classmethod
    def from_pretrained(cls, folder: Path | str, files: ModelFiles | None = None) -> MTCNN:
        """Load ``config.json`` + ``{pnet,rnet,onet}.safetensors`` from ``folder`` strictly.

        ``files`` reads the folder (a zoo model's pinned reader,
        :meth:`face2scene_cli.zoo.ModelInfo.files_reader`); default:
        :meth:`face2scene_cli.zoo.ModelFiles.for_folder` (pinned if it has a metadata.json).

        Raises:
            ModelIntegrityError: a file is unreadable (or not pinned / not the pinned bytes),
                the config is invalid, or a weight file lacks or adds tensors or a shape
                differs; the file is named.
        """
        files = files or ModelFiles.for_folder(Path(folder))
        try:
            config = MTCNNConfig.from_dict(files.read_json(CONFIG_NAME))
        except (TypeError, ValueError) as err:
            raise ModelIntegrityError(f"{files.name(CONFIG_NAME)}: {err}") from err
        model = cls(config)
        for name, filename in WEIGHT_NAMES.items():
            net: nn.Module = getattr(model, name)
            state = files.load_safetensors(filename)
            check_state_dict(net, state, files.name(filename))
            net.load_state_dict(state, strict=True)
        return model.to(memory_format=torch.channels_last).eval()

    def save_pretrained(self, folder: Path | str) -> list[str]:
        """Write ``config.json`` and one safetensors file per network; returns the file names."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / CONFIG_NAME).write_text(self.config.to_json(), encoding="utf-8")
        for name, filename in WEIGHT_NAMES.items():
            state = {
                k: v.detach().contiguous() for k, v in getattr(self, name).state_dict().items()
            }
            # one metadata key: safetensors stores metadata in a hash map (random key order)
            save_file(state, str(folder / filename), metadata={"format": "pt"})
        return [CONFIG_NAME, *WEIGHT_NAMES.values()]

    @torch.inference_mode()
    def detect(self, image: np.ndarray, min_face: float = 20.0) -> MTCNNOutput:
        """Faces in one RGB uint8 (H, W, 3) image; see :func:`detect_faces`."""
        return detect_faces(self, image, min_face=min_face)


# --------------------------------------------------------------------------- box helpers


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, mode: str = "union") -> np.ndarray:
    """Greedy non-maximum suppression, highest score first (ties: lower index first).

    Args:
        boxes: (N, 4) ``x0, y0, x1, y1``.
        scores: (N,).
        threshold: a box is dropped when its overlap with a kept box is above this.
        mode: ``"union"``: IoU with areas ``(x1 - x0) * (y1 - y0)`` (torchvision's ``nms``);
            ``"min"``: intersection over the smaller area with ``+1`` pixel sizes
            (facenet-pytorch's ``nms_numpy(..., 'Min')`` after O-Net).

    Returns:
        (K,) int64 indices of the kept boxes, by descending score.
    """
    if mode not in ("union", "min"):
        raise ValueError(f"mode must be 'union' or 'min', got {mode!r}")
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    boxes = np.asarray(boxes, dtype=np.float64)
    one = 1.0 if mode == "min" else 0.0
    x0, y0, x1, y1 = boxes.T
    area = (x1 - x0 + one) * (y1 - y0 + one)
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        w = np.maximum(0.0, np.minimum(x1[i], x1[rest]) - np.maximum(x0[i], x0[rest]) + one)
        h = np.maximum(0.0, np.minimum(y1[i], y1[rest]) - np.maximum(y0[i], y0[rest]) + one)
        inter = w * h
        if mode == "min":
            overlap = inter / np.minimum(area[i], area[rest])
        else:
            union = area[i] + area[rest] - inter
            overlap = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        order = rest[overlap <= threshold]
    return np.asarray(keep, dtype=np.int64)


def _square(boxes: np.ndarray) -> np.ndarray:
    """facenet-pytorch ``rerec``: grow each (N, 4) box into a square around its centre."""
    out = boxes.copy()
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    out[:, 0] = boxes[:, 0] + w * 0.5 - side * 0.5
    out[:, 1] = boxes[:, 1] + h * 0.5 - side * 0.5
    out[:, 2] = out[:, 0] + side
    out[:, 3] = out[:, 1] + side
    return out


def _regress(boxes: np.ndarray, reg: np.ndarray) -> np.ndarray:
    """facenet-pytorch ``bbreg``: shift box edges by ``reg`` times the (+1) box size."""
    w = (boxes[:, 2] - boxes[:, 0] + 1)[:, None]
    h = (boxes[:, 3] - boxes[:, 1] + 1)[:, None]
    return boxes + reg * np.concatenate([w, h, w, h], axis=1)


def _crop_windows(boxes: np.ndarray, w: int, h: int) -> np.ndarray:
    """facenet-pytorch ``pad``: integer ``x0, y0, x1, y1`` (exclusive ends) of each box's part
    inside the image; boxes are truncated towards zero first. Empty windows have x1 <= x0."""
    b = np.trunc(boxes).astype(np.int64)
    x0 = np.maximum(b[:, 0], 1) - 1
    y0 = np.maximum(b[:, 1], 1) - 1
    x1 = np.minimum(b[:, 2], w)
    y1 = np.minimum(b[:, 3], h)
    return np.stack([x0, y0, x1, y1], axis=1)


def crop_resize(image: torch.Tensor, windows: np.ndarray, size: int) -> torch.Tensor:
    """Area-resize image windows to ``size`` x ``size`` (``F.interpolate(mode="area")``, one
    window at a time, as facenet-pytorch does; the batch is then run at once).

    Args:
        image: (1, C, H, W) float image.
        windows: (N, 4) int ``x0, y0, x1, y1`` with ``0 <= x0 < x1 <= W`` (same for y).
        size: output side in pixels.

    Returns:
        (N, C, size, size) float32 crops in the image's value range (channels-last).
    """
    out = image.new_empty((len(windows), image.shape[1], size, size))
    out = out.contiguous(memory_format=torch.channels_last)
    for k, (x0, y0, x1, y1) in enumerate(windows.tolist()):
        out[k] = F.interpolate(image[:, :, y0:y1, x0:x1], size=(size, size), mode="area")[0]
    return out


# --------------------------------------------------------------------------- cascade


def _pyramid(h: int, w: int, min_face: float, factor: float) -> list[float]:
    scale = 12.0 / min_face
    side = min(h, w) * scale
    scales = []
    while side >= 12:
        scales.append(scale)
        scale *= factor
        side *= factor
    return scales


def _run_batched(net: nn.Module, crops: torch.Tensor, batch: int) -> list[np.ndarray]:
    outs: list[list[np.ndarray]] = []
    for start in range(0, len(crops), batch):
        x = crops[start : start + batch]
        res = net(((x - _MEAN) * _SCALE).contiguous(memory_format=torch.channels_last))
        outs.append([r.float().cpu().numpy() for r in res])
    return [np.concatenate(parts, axis=0) for parts in zip(*outs, strict=True)]


def _stage1(model: MTCNN, img: torch.Tensor, min_face: float) -> np.ndarray:
    """P-Net over the pyramid -> (N, 5) squared ``x0, y0, x1, y1, score`` candidates."""
    cfg = model.config
    h, w = img.shape[2:]
    found = []
    for scale in _pyramid(h, w, min_face, cfg.factor):
        level = F.interpolate(img, size=(int(h * scale + 1), int(w * scale + 1)), mode="area")
        level = ((level - _MEAN) * _SCALE).contiguous(memory_format=torch.channels_last)
        reg, prob = model.pnet(level)
        prob = prob[0, 1].float().cpu().numpy()
        ys, xs = np.nonzero(prob >= cfg.thresholds[0])
        if len(ys) == 0:
            continue
        cells = np.stack([xs, ys], axis=1).astype(np.float32)
        q1 = np.floor((2 * cells + 1) / np.float32(scale))
        q2 = np.floor((2 * cells + 12) / np.float32(scale))
        reg_np = reg[0].float().cpu().numpy()[:, ys, xs].T
        cand = np.concatenate([q1, q2, prob[ys, xs, None], reg_np], axis=1)
        found.append(cand[nms(cand[:, :4], cand[:, 4], cfg.nms_pnet_level)])
    if not found:
        return np.zeros((0, 5), dtype=np.float64)
    cand = np.concatenate(found, axis=0).astype(np.float64)
    cand = cand[nms(cand[:, :4], cand[:, 4], cfg.nms_pnet)]
    bw = cand[:, 2] - cand[:, 0]
    bh = cand[:, 3] - cand[:, 1]
    boxes = cand[:, :4] + cand[:, 5:9] * np.stack([bw, bh, bw, bh], axis=1)
    return np.concatenate([_square(boxes), cand[:, 4:5]], axis=1)


def box_crops(img: torch.Tensor, boxes: np.ndarray, size: int) -> tuple[torch.Tensor, np.ndarray]:
    """Crops of the boxes' in-image parts, and the mask of boxes that have one.

    ``img`` :math:`(1, 3, H, W)` float, ``boxes`` (N, >= 4) ``x0, y0, x1, y1``; returns the
    crops :math:`(K, 3, size, size)` and the (N,) bool mask of the K boxes cut."""
    windows = _crop_windows(boxes[:, :4], img.shape[3], img.shape[2])
    ok = (windows[:, 2] > windows[:, 0]) & (windows[:, 3] > windows[:, 1])
    return crop_resize(img, windows[ok], size), ok


def detect_faces(model: MTCNN, image: np.ndarray, min_face: float = 20.0) -> MTCNNOutput:
    """Run the MTCNN cascade on one image.

    Args:
        model: the networks and settings.
        image: (H, W, 3) uint8 RGB.
        min_face: smallest face side the pyramid looks for, in pixels (facenet-pytorch's
            ``min_face_size``); boxes are not filtered by it.

    Returns:
        :class:`MTCNNOutput` with the faces by descending score.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {image.shape} {image.dtype}")
    if min_face <= 0:
        raise ValueError(f"min_face must be > 0 pixels, got {min_face}")
    cfg = model.config
    device = next(model.parameters()).device
    empty = MTCNNOutput(
        np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, 5, 2), np.float32)
    )
    with torch.inference_mode():
        # 1. P-Net over the image pyramid
        img = torch.tensor(image, device=device)
        img = img.permute(2, 0, 1).unsqueeze(0).float()
        boxes = _stage1(model, img, min_face)
        if len(boxes) == 0:
            return empty

        # 2. R-Net on 24x24 crops
        crops, ok = box_crops(img, boxes, 24)
        boxes = boxes[ok]
        if len(boxes) == 0:
            return empty
        reg, prob = _run_batched(model.rnet, crops, cfg.batch_size)
        keep = prob[:, 1] > cfg.thresholds[1]
        boxes = np.concatenate([boxes[keep, :4], prob[keep, 1:2]], axis=1)
        reg = reg[keep]
        pick = nms(boxes[:, :4], boxes[:, 4], cfg.nms_rnet)
        boxes, reg = boxes[pick], reg[pick]
        boxes[:, :4] = _square(_regress(boxes[:, :4], reg))
        if len(boxes) == 0:
            return empty

        # 3. O-Net on 48x48 crops: scores, landmarks, final boxes
        crops, ok = box_crops(img, boxes, 48)
        boxes = boxes[ok]
        if len(boxes) == 0:
            return empty
        reg, points, prob = _run_batched(model.onet, crops, cfg.batch_size)
        keep = prob[:, 1] > cfg.thresholds[2]
        boxes, reg, points, score = boxes[keep, :4], reg[keep], points[keep], prob[keep, 1]
        bw = (boxes[:, 2] - boxes[:, 0] + 1)[:, None]
        bh = (boxes[:, 3] - boxes[:, 1] + 1)[:, None]
        landmarks = np.stack(
            [bw * points[:, :5] + boxes[:, 0:1] - 1, bh * points[:, 5:] + boxes[:, 1:2] - 1],
            axis=2,
        )
        boxes = _regress(boxes, reg)
        pick = nms(boxes, score, cfg.nms_onet, mode="min")
    return MTCNNOutput(
        boxes[pick].astype(np.float32),
        score[pick].astype(np.float32),
        landmarks[pick].astype(np.float32),
    )


# --------------------------------------------------------------------------- detector


class MTCNNDetector(FaceDetector):
    """Our MTCNN cascade (:class:`MTCNN`) with the ``mtcnn`` zoo weights.

    Args:
        min_face: smallest face kept (pixels, shorter box side); also the smallest face the
            image pyramid searches for, so larger values are faster.
        max_faces: keep at most this many faces (most confident first).
        device: torch device for the three networks.
        score_threshold: O-Net face probability a face needs. facenet-pytorch returns all
            faces above 0.7; on the benchmark photos (clean and degraded) false faces scored
            up to 0.93 and raising the cut from 0.7 to 0.95 lost no true face.
        models_root: zoo folder (default :func:`face2scene_cli.zoo.models_dir`).

    Boxes are not clipped: a face cut by the image edge gets a box (and maybe landmarks)
    reaching past it.

    Photos over 2 MP are searched on a downscaled copy (:class:`FaceDetector`), with the
    pyramid starting at the copy's own scale at most (P-Net's 12 px window), and each face's 5
    landmarks are redone by O-Net on its full-resolution crop (:func:`refine_landmarks`).

    Raises:
        NotAvailableError / ModelIntegrityError: from :func:`face2scene_cli.zoo.require_model`.
    """

    name = "mtcnn"
    smallest_face = 12.0  # P-Net's window: the pyramid never enlarges a downscaled copy

    def __init__(
        self,
        min_face: int = 20,
        max_faces: int | None = None,
        device: str = "cpu",
        score_threshold: float = 0.95,
        models_root: Path | None = None,
    ) -> None:
        super().__init__(min_face=min_face, max_faces=max_faces)
        if not 0.0 <= score_threshold <= 1.0:
            raise ConfigError(f"score_threshold must be in [0, 1], got {score_threshold}")
        try:
            torch_device = torch.device(device)
        except RuntimeError as err:
            raise ConfigError(f"device {device!r} is not a torch device ({err})") from err
        self.info = require_model("mtcnn", models_root)
        self.model = MTCNN.from_pretrained(self.info.folder, self.info.files_reader())
        self.model = self.model.to(torch_device)
        self.score_threshold = score_threshold

    def _detect_one(self, image: np.ndarray) -> list[DetectedFace]:
        return self._detect_at(image, float(self.min_face))

    def _detect_at(self, image: np.ndarray, min_face: float) -> list[DetectedFace]:
        out = self.model.detect(as_rgb_uint8(image), min_face=min_face)
        return [
            DetectedFace.from_arrays(box, score, points)
            for box, score, points in zip(out.boxes, out.scores, out.landmarks, strict=True)
            if score >= self.score_threshold
        ]

    def _refine(self, image: np.ndarray, faces: list[DetectedFace]) -> list[DetectedFace]:
        """O-Net's 5 landmarks on each face's full-resolution crop (the squared box, area-
        resized to 48x48 as in the cascade); box and score stay the downscaled copy's. A face
        O-Net no longer scores above 0.5 on that crop keeps its mapped-back landmarks."""
        return [
            replace(face, landmarks=points) if points is not None else face
            for face, points in zip(
                faces, refine_landmarks(self.model, image, [f.box for f in faces]), strict=True
            )
        ]


def refine_landmarks(
    model: MTCNN, image: np.ndarray, boxes: list[np.ndarray], min_score: float = 0.5
) -> list[np.ndarray | None]:
    """O-Net's (5, 2) landmarks for each box on the full-resolution ``image`` (RGB uint8).

    Each box is squared (``rerec``), its in-image part cut from the uint8 image (only the
    crops become float, never the whole photo) and area-resized to 48x48; the landmarks are
    placed in the squared box as :func:`detect_faces` does. None for a box with no pixel in
    the image or whose crop O-Net scores below ``min_score``.
    """
    if not boxes:
        return []
    h, w = image.shape[:2]
    squares = _square(np.stack(boxes).astype(np.float64)[:, :4])
    windows = _crop_windows(squares, w, h)
    ok = (windows[:, 2] > windows[:, 0]) & (windows[:, 3] > windows[:, 1])
    out: list[np.ndarray | None] = [None] * len(boxes)
    if not ok.any():
        return out
    device = next(model.parameters()).device
    with torch.inference_mode():
        crops = torch.cat(
            [
                F.interpolate(
                    torch.from_numpy(np.ascontiguousarray(image[y0:y1, x0:x1]))
                    .to(device)
                    .permute(2, 0, 1)[None]
                    .float(),
                    size=(48, 48),
                    mode="area",
                )
                for x0, y0, x1, y1 in windows[ok].tolist()
            ]
        ).contiguous(memory_format=torch.channels_last)
        _, points, prob = _run_batched(model.onet, crops, model.config.batch_size)
    sq = squares[ok]
    bw = (sq[:, 2] - sq[:, 0] + 1)[:, None]
    bh = (sq[:, 3] - sq[:, 1] + 1)[:, None]
    marks = np.stack(
        [bw * points[:, :5] + sq[:, 0:1] - 1, bh * points[:, 5:] + sq[:, 1:2] - 1], axis=2
    ).astype(np.float32)
    for k, i in enumerate(np.flatnonzero(ok)):
        if prob[k, 1] >= min_score:
            out[i] = marks[k]
    return out
