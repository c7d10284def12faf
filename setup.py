"""Package build hook: the gRPC stubs are generated from protos/ as part of every build.

All metadata is in pyproject.toml. ``build_py`` runs protos/generate.py into the build folder, so
``pip wheel .`` (the image's wheel stage) from a clean checkout yields a complete package. An
editable install (``make setup``) leaves the stubs to ``make protos``, which runs the same script
into services/.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


class BuildPyWithStubs(build_py):
    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return
        script = HERE / "protos" / "generate.py"
        if not script.is_file():
            raise RuntimeError(f"{script} is missing: build from a checkout (or an sdist) that has protos/")
        spec = importlib.util.spec_from_file_location("genoserve_protos_generate", script)
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        module.generate(Path(self.build_lib), mypy=True)


setup(cmdclass={"build_py": BuildPyWithStubs})
