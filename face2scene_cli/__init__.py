"""face2scene: restore degraded photos of people, guided by the degradation read off their faces."""

__version__ = "0.1.0"
