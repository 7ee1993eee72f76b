"""Head-pose proxies from five landmarks, and how far apart two poses are.

The gallery stores each reference's pose (:class:`Pose`); choosing references for a face
(:meth:`face2scene_cli.faces.gallery.match.Gallery.best_references`) trades identity against
:func:`pose_distance` with :class:`PoseWeights`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["Pose", "PoseWeights", "face_pose", "pose_distance"]


@dataclass(frozen=True)
class Pose:
    """Head-pose proxies from the five landmarks (not angles, except roll).

    Attributes:
        yaw: horizontal offset of the nose tip from the eye midpoint, in inter-ocular distances,
            measured along the eye line; 0 frontal, positive when the nose points to the
            image's right (about 0.35 at 30 degrees of yaw).
        pitch: ``log(nose-to-eye-line / mouth-to-nose)`` vertical distances, perpendicular to
            the eye line; about 0 frontal, positive looking down, negative looking up.
        roll: angle of the eye line in degrees (image-left eye to image-right eye), positive
            clockwise on screen (y is down).
    """

    yaw: float
    pitch: float
    roll: float

    def to_dict(self) -> dict[str, float]:
        """Rounded JSON-ready values."""
        return {
            "yaw": round(self.yaw, 4),
            "pitch": round(self.pitch, 4),
            "roll": round(self.roll, 2),
        }


@dataclass(frozen=True)
class PoseWeights:
    """How :meth:`Gallery.best_references` trades identity against pose.

    ``score = identity - pose_weight * pose_distance`` where ``identity`` is the similarity
    rescaled so the encoder's threshold is 0 and a perfect match is 1, and ``pose_distance``
    is the Euclidean norm of the pose differences divided by their scales (1 = one scale
    apart, e.g. about 30 degrees of yaw).

    Attributes:
        pose_weight: identity units one pose-distance unit costs (0 = rank by identity only).
        yaw_scale: yaw-proxy difference worth one unit (0.35 = about 30 degrees).
        pitch_scale: pitch-proxy difference worth one unit (0.3 = about 15-20 degrees).
        roll_scale: roll difference in degrees worth one unit; large because the aligned
            crops the restorer sees have roll undone, so it matters least (it only breaks ties
            such as lighting direction relative to the face).

    The pitch proxy is the noisiest (a smile lifts the mouth corners), hence its wider scale.
    """

    pose_weight: float = 0.25
    yaw_scale: float = 0.35
    pitch_scale: float = 0.3
    roll_scale: float = 90.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.pose_weight) and self.pose_weight >= 0):
            raise ValueError(f"pose_weight must be >= 0, got {self.pose_weight}")
        for name in ("yaw_scale", "pitch_scale", "roll_scale"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be > 0, got {value}")


def face_pose(landmarks: np.ndarray) -> Pose:
    """Pose proxies (see :class:`Pose`) of five landmarks.

    Args:
        landmarks: (5, 2) points: image-left eye, image-right eye, nose tip, image-left mouth
            corner, image-right mouth corner (source pixels).

    Returns:
        The :class:`Pose`; all zeros when the eyes coincide (degenerate landmarks).
    """
    pts = np.asarray(landmarks, dtype=np.float64).reshape(-1, 2)
    if pts.shape != (5, 2):
        raise ValueError(f"landmarks must have shape (5, 2), got {np.asarray(landmarks).shape}")
    left_eye, right_eye, nose, mouth_l, mouth_r = pts
    eye_mid = (left_eye + right_eye) / 2
    d = right_eye - left_eye
    iod = float(np.hypot(*d))
    if not math.isfinite(iod) or iod < 1e-6:
        return Pose(0.0, 0.0, 0.0)
    roll = math.degrees(math.atan2(d[1], d[0]))
    c, s = d / iod

    def derolled(p: np.ndarray) -> np.ndarray:
        q = p - eye_mid
        return np.array([c * q[0] + s * q[1], -s * q[0] + c * q[1]])

    n = derolled(nose)
    m = derolled((mouth_l + mouth_r) / 2)
    eps = 0.05 * iod
    pitch = math.log(max(n[1], eps) / max(m[1] - n[1], eps))
    return Pose(yaw=float(n[0] / iod), pitch=float(pitch), roll=float(roll))


def pose_distance(a: Pose, b: Pose, weights: PoseWeights | None = None) -> float:
    """Scaled Euclidean distance between two poses (roll wrapped to [-180, 180))."""
    w = weights or PoseWeights()
    droll = (a.roll - b.roll + 180.0) % 360.0 - 180.0
    return float(
        math.sqrt(
            ((a.yaw - b.yaw) / w.yaw_scale) ** 2
            + ((a.pitch - b.pitch) / w.pitch_scale) ** 2
            + (droll / w.roll_scale) ** 2
        )
    )
