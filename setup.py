"""Build: pure-Python packages plus the native runtime compiled through cffi (API mode).

`convert/` installs as `edgeq.convert`, so the project has one import namespace. The extension's C
sources compile one per CPU at a time (ParallelBuildExt): one after another they took 2.5 min on a
2-core machine, most of a fresh install.
"""
import os
from concurrent.futures import ThreadPoolExecutor

from setuptools import setup
from setuptools.command.build_ext import build_ext


class ParallelBuildExt(build_ext):
    def build_extension(self, ext):
        compile_one = self.compiler.compile

        def compile_all(sources, **options):
            with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
                objects = pool.map(lambda source: compile_one([source], **options), sources)
                return [obj for batch in objects for obj in batch]

        self.compiler.compile = compile_all
        try:
            super().build_extension(ext)
        finally:
            self.compiler.compile = compile_one


setup(
    packages=["edgeq", "edgeq.convert", "edgeq.data"],
    package_data={"edgeq.data": ["*.txt", "README.md"]},
    package_dir={"edgeq": "edgeq", "edgeq.convert": "convert"},
    cffi_modules=["native/build_ffi.py:ffibuilder"],
    cmdclass={"build_ext": ParallelBuildExt},
    zip_safe=False,
)
