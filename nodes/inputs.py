"""ComfyUI input widgets built from the core's parameter table (abcache_core/params.py), the one home of every
default, range and tooltip. A node that shows a parameter differently on purpose passes the change by name
(``widget("order", max=NODE_MAX_ORDER)``)."""
from __future__ import annotations

import dataclasses

from comfy_api.latest import io

from ..abcache_core import PARAMS, Param


def node_param(name: str, **override) -> Param:
    """The table's parameter ``name``, with a node's deliberate differences (default, max, tooltip, ...)."""
    p = PARAMS[name]
    return dataclasses.replace(p, **override) if override else p


def widget(p: Param, optional: bool = False):
    """The ComfyUI input for parameter ``p``."""
    common = dict(default=p.default, tooltip=p.tooltip, optional=optional)
    if p.kind == "int":
        return io.Int.Input(p.name, min=int(p.min), max=int(p.max), step=int(p.step or 1), **common)
    if p.kind == "float":
        return io.Float.Input(p.name, min=p.min, max=p.max, step=p.step, **common)
    if p.kind == "choice":
        return io.Combo.Input(p.name, options=list(p.choices), **common)
    if p.kind == "text":
        return io.String.Input(p.name, multiline=False, **common)
    if p.kind == "bool":
        return io.Boolean.Input(p.name, **common)
    raise ValueError(f"unknown parameter kind {p.kind!r} for {p.name}")
