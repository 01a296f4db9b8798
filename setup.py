"""Build glue: the cffi module (declared in lxcone/native/_build.py) and two executables.

They are plain C programs built next to the extension: lxcone-monitor, the per-container parent
process (see lxcone/native/csrc/monitor.c for why it is not Python), and lxcone-client, the
action shim's client of the resident agent (lxcone/native/csrc/client.c: no Python start-up).
Both are linked statically against musl when musl-gcc is there (scripts/setup.sh installs it),
else against glibc.
"""

import os
import shutil
import subprocess

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
        musl = shutil.which("musl-gcc")
        for name, sources in EXECUTABLES.items():
            out = os.path.join(out_dir, name)
            if musl:
                try:
                    self.link_with_musl(musl, sources, out)
                    continue
                except Exception as exc:  # e.g. no uapi headers where we look: glibc still works
                    self.warn(f"{name}: musl build failed ({exc}); linking against glibc")
            self.link_with_glibc(sources, name, out_dir)

    def link_with_musl(self, musl: str, sources: list[str], out: str) -> None:
        """Static against musl: a static glibc binary spends ~0.27 ms (0.33 ms on an idle host)
        in its start-up before main, mostly CPUID probing of the CPU and caches, and each CPUID
        is a VM exit (3.8 us on our VMs); musl's start-up is ~0.03 ms (docs/architecture.md).
        musl-gcc sees only musl's headers, so the kernel's uapi ones are linked in privately."""
        uapi = os.path.join(self.build_temp, "uapi")
        os.makedirs(uapi, exist_ok=True)
        triplet = subprocess.run(["gcc", "-print-multiarch"], capture_output=True, text=True,
                                 check=True).stdout.strip()
        for sub, src in (("linux", "/usr/include/linux"),
                         ("asm-generic", "/usr/include/asm-generic"),
                         ("asm", f"/usr/include/{triplet}/asm")):
            link = os.path.join(uapi, sub)
            if not os.path.islink(link):
                os.symlink(src, link)
        self.spawn([musl, "-O2", "-Wall", "-static", "-Ilxcone/native/csrc", "-isystem", uapi,
                    "-o", out, *sources])

    def link_with_glibc(self, sources: list[str], name: str, out_dir: str) -> None:
        objects = self.compiler.compile(
            sources,
            output_dir=self.build_temp,
            include_dirs=["lxcone/native/csrc"],
            extra_postargs=["-O2", "-Wall"],
        )
        try:
            # Static: no ld.so and libc relocation at every start.
            self.compiler.link_executable(objects, name, output_dir=out_dir,
                                          extra_postargs=["-static"])
        except Exception:  # no libc.a (libc6-dev missing its static part): link dynamically
            self.compiler.link_executable(objects, name, output_dir=out_dir)

setup(
    cffi_modules=["lxcone/native/_build.py:ffibuilder"],
    cmdclass={"build_ext": BuildWithExecutables},
)
