"""Training of f2s networks (FaDeX now; the scene restorer later)."""
