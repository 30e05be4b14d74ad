"""Hook specifications: the whole contract between the harness and its plugins.

A plugin is a module (or object) named in the ``wsol_harness`` entry-point group of its
distribution. It implements any of the hooks below, each decorated with ``@hookimpl`` and
returning a list of :class:`harness.registry.Entry`; first-party plugins use exactly the same
mechanism. What a hook returns is checked: a wrong shape, a bad entry, a misspelled hook name
or a module without ``@hookimpl`` is reported by ``harness list`` and skipped, never fatal.
A ``factory`` may be ``harness.registry.lazy("module:attr")`` (imported on first use) and a
``config`` a file, a dict of sections, or a function returning one.
"""
from __future__ import annotations

import pluggy

PROJECT = "wsol_harness"
ENTRY_POINT_GROUP = "wsol_harness"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def harness_register_methods():
    """Method plugins: ``Entry(name, factory, description, config=path)``.

    ``factory(cfg, num_classes)`` returns a :class:`harness.method.Method`; ``config`` is the
    plugin's default mmengine config file.
    """


@hookspec
def harness_register_cam_sources():
    """CAM sources: ``Entry(name, factory, description, config=None)``. ``factory(**options)``
    (the options are a run's ``method.options``; their defaults the factory's keyword arguments,
    or ``config``, a dict of them) returns a callable ``source(model, images, classes) ->
    (maps (B, h, w), logits (B, C))``, ``model(images) -> (logits, last features)``; see
    :class:`harness.cam.CamSource`, :func:`harness.cam.build_source` and
    :func:`harness.cam.run_source`."""


@hookspec
def harness_register_protocols():
    """Protocol presets: ``Entry(name, None, description, config=path)``; the config file
    holds one ``protocol = dict(...)`` (see :class:`harness.protocol.Protocol`)."""


@hookspec
def harness_register_datasets():
    """Datasets: ``Entry(name, factory, description, config=path)``; ``factory(data_cfg)``
    returns a :class:`harness.data.base.WsolDataset`; ``config`` sets the ``data`` section."""


@hookspec
def harness_register_annotators():
    """Pseudo-box annotators: ``Entry(name, factory, description, config={"annotators": {name: defaults}})``;
    ``factory(settings)`` returns a :class:`harness.annotators.base.Annotator`, whose boxes a
    protocol with ``supervision="pseudo:<name>"`` selects with."""
