"""The version, in one place: `malm --version`, the bundle manifest and the wheel read it (a module of its own
so that library modules need not import the `malm` package, whose `Retriever` attribute loads the SDK)."""

__version__ = "0.1.0"
