"""Faces: detection, alignment, identity embeddings, reference galleries and paste-back."""
