"""The package list, which pyproject.toml cannot map by itself: the top-level folders
`server/` and `runtimes/` install as `opensandbox_emulator.server` and
`opensandbox_emulator.runtimes`, so nothing generic lands at the top of site-packages.
Subpackages of `opensandbox_emulator/` itself (`testing`) install as they are.

One C extension, the framing of a command's output into events (`server/execd/_framing.c`),
is optional: where no compiler is at hand (a slim image) the install goes on without it and
the same framing runs in Python, slower."""

from setuptools import Extension, find_packages, setup

PACKAGE = "opensandbox_emulator"
LAYERS = ("server", "runtimes")

setup(
    packages=[PACKAGE, *(f"{PACKAGE}.{name}" for name in find_packages(PACKAGE)),
              *(f"{PACKAGE}.{name}" for name in
                find_packages(include=[*LAYERS, *(f"{layer}.*" for layer in LAYERS)]))],
    package_dir={PACKAGE: PACKAGE, **{f"{PACKAGE}.{layer}": layer for layer in LAYERS}},
    ext_modules=[
        Extension(f"{PACKAGE}.server.execd._framing", ["server/execd/_framing.c"],
                  extra_compile_args=["-O3"], optional=True),
    ],
)
