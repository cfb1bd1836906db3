"""The package list, which pyproject.toml cannot map by itself: the top-level folders
`server/` and `runtimes/` install as `opensandbox_emulator.server` and
`opensandbox_emulator.runtimes`, so nothing generic lands at the top of site-packages.
Subpackages of `opensandbox_emulator/` itself (`testing`) install as they are."""

from setuptools import find_packages, setup

PACKAGE = "opensandbox_emulator"
LAYERS = ("server", "runtimes")

setup(
    packages=[PACKAGE, *(f"{PACKAGE}.{name}" for name in find_packages(PACKAGE)),
              *(f"{PACKAGE}.{name}" for name in
                find_packages(include=[*LAYERS, *(f"{layer}.*" for layer in LAYERS)]))],
    package_dir={PACKAGE: PACKAGE, **{f"{PACKAGE}.{layer}": layer for layer in LAYERS}},
)
