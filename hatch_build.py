"""Builds zoo.sparse's native CPU kernels when the package is built or installed.

hatchling runs this hook for wheels and for editable installs (what `uv sync` makes). It
compiles `src/zoo/sparse/_native/kernels.cc` against the XLA FFI headers that jaxlib ships
(jaxlib is a build requirement) into `src/zoo/sparse/_native/_zoo_kernels.so`, beside the
Python module that loads it; a wheel carries the library too.

Without a C++ compiler the build goes on without the kernels, and zoo.sparse runs its pure-JAX
path (`zoo.sparse.kernels()` says so and why). `ZOO_BUILD_KERNELS=0` skips the build; a
failing compile is an error, not a silent fallback.
"""

import os
import pathlib
import shutil
import subprocess
import sys

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

NATIVE = pathlib.Path("src", "zoo", "sparse", "_native")
SOURCE = NATIVE / "kernels.cc"
LIBRARY = NATIVE / "_zoo_kernels.so"
# -ffp-contract=off: no multiply-add fused into one rounding, so that the kernels' arithmetic
# rounds as XLA's does and the two paths agree bit for bit.
FLAGS = ["-O3", "-std=c++17", "-fPIC", "-shared", "-ffp-contract=off", "-fno-math-errno"]


def _compiler() -> str | None:
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")


def _include_dir() -> str:
    # The headers of the jaxlib in the build environment; importing jax itself is not needed.
    import jaxlib

    return str(pathlib.Path(jaxlib.__file__).parent / "include")


def _compile(compiler: str, root: pathlib.Path) -> None:
    command = [compiler, *FLAGS, "-isystem", _include_dir(), str(root / SOURCE)]
    # Built on the machine that runs it (an install from source), so tune for its CPU; a
    # compiler that refuses -march=native gets the portable build.
    for march in (["-march=native"], []):
        done = subprocess.run(
            [*command, *march, "-o", str(root / LIBRARY)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode == 0:
            return
    raise RuntimeError(f"compiling zoo's sparse kernels failed:\n{done.stderr}")


class CustomBuildHook(BuildHookInterface):
    def initialize(self, version: str, build_data: dict) -> None:
        root = pathlib.Path(self.root)
        if os.environ.get("ZOO_BUILD_KERNELS") == "0":
            print("zoo: ZOO_BUILD_KERNELS=0, native sparse kernels not built", file=sys.stderr)
            return
        compiler = _compiler()
        if compiler is None:
            print("zoo: no C++ compiler, native sparse kernels not built", file=sys.stderr)
            return
        _compile(compiler, root)
        if version != "editable":  # an editable install loads it from the source tree
            build_data["force_include"][str(root / LIBRARY)] = str(LIBRARY.relative_to("src"))
        build_data["pure_python"] = False
        build_data["infer_tag"] = True
