"""Build glue: the cffi module (declared in lxcone/native/_build.py) and lxcone-monitor.

lxcone-monitor is a plain executable built from the same C sources, next to the extension: it is
the per-container parent process (see lxcone/native/csrc/monitor.c for why it is not Python).
"""

import os

from setuptools import setup
from setuptools.command.build_ext import build_ext

MONITOR_SOURCES = ["lxcone/native/csrc/monitor.c", "lxcone/native/csrc/container.c"]


class BuildWithMonitor(build_ext):
    def run(self) -> None:
        super().run()
        if self.inplace:
            out_dir = os.path.join("lxcone", "native")
        else:
            out_dir = os.path.join(self.build_lib, "lxcone", "native")
        os.makedirs(out_dir, exist_ok=True)
        objects = self.compiler.compile(
            MONITOR_SOURCES,
            output_dir=self.build_temp,
            include_dirs=["lxcone/native/csrc"],
            extra_postargs=["-O2", "-Wall"],
        )
        try:
            # Static: no ld.so and libc relocation at every container start (~0.1 ms here).
            self.compiler.link_executable(objects, "lxcone-monitor", output_dir=out_dir,
                                          extra_postargs=["-static"])
        except Exception:  # no libc.a (libc6-dev missing its static part): link dynamically
            self.compiler.link_executable(objects, "lxcone-monitor", output_dir=out_dir)


setup(
    cffi_modules=["lxcone/native/_build.py:ffibuilder"],
    cmdclass={"build_ext": BuildWithMonitor},
)
