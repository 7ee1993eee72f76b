"""Network architectures (``nn.Module`` s) that do not belong to one pipeline stage.

One network per file; each is a diffusers-style config-registered module
(``ModelMixin, ConfigMixin``) whose weights live in the model zoo (``models/<name>/``).
Nothing is imported here: import the module you need (``face2scene_cli.archs.rrdbnet``).
"""
