"""Build glue: the cffi module (declared in lxcone/native/_build.py) and two executables.

They are plain C programs built next to the extension: lxcone-monitor, the per-container parent
process (see lxcone/native/csrc/monitor.c for why it is not Python), and lxcone-client, the
action shim's client of the resident agent (lxcone/native/csrc/client.c: no Python start-up).
"""

import os

from setuptools import setup
from setuptools.command.build_ext import build_ext

EXECUTABLES = {
    "lxcone-monitor": ["lxcone/native/csrc/monitor.c", "lxcone/native/csrc/container.c",
                       "lxcone/native/csrc/attach.c"],
    "lxcone-client": ["lxcone/native/csrc/client.c"],
}


class BuildWithExecutables(build_ext):
    def run(self) -> None:
        super().run()
        if self.inplace:
            out_dir = os.path.join("lxcone", "native")
        else:
            out_dir = os.path.join(self.build_lib, "lxcone", "native")
        os.makedirs(out_dir, exist_ok=True)
        for name, sources in EXECUTABLES.items():
            objects = self.compiler.compile(
                sources,
                output_dir=self.build_temp,
                include_dirs=["lxcone/native/csrc"],
                extra_postargs=["-O2", "-Wall"],
            )
            try:
                # Static: no ld.so and libc relocation at every start (~0.1 ms here; the client
                # runs once per action, the monitor once per container).
                self.compiler.link_executable(objects, name, output_dir=out_dir,
                                              extra_postargs=["-static"])
            except Exception:  # no libc.a (libc6-dev missing its static part): link dynamically
                self.compiler.link_executable(objects, name, output_dir=out_dir)


setup(
    cffi_modules=["lxcone/native/_build.py:ffibuilder"],
    cmdclass={"build_ext": BuildWithExecutables},
)
