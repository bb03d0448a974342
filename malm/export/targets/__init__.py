"""One module per export target; each has `build(ctx: ExportContext) -> Artifacts`.

`registry.TARGETS[name].module` names the module; `run_export` imports it and calls `build`. Adding a
target: a `Target` entry in registry.py and a module here (see docs/architecture.md, "Add an export target").
"""
