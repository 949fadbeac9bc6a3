"""Build: pure-Python packages plus the native runtime compiled through cffi (API mode).

`convert/` installs as `edgeq.convert`, so the project has one import namespace.
"""
from setuptools import setup

setup(
    packages=["edgeq", "edgeq.convert", "edgeq.data"],
    package_data={"edgeq.data": ["*.txt", "README.md"]},
    package_dir={"edgeq": "edgeq", "edgeq.convert": "convert"},
    cffi_modules=["native/build_ffi.py:ffibuilder"],
    zip_safe=False,
)
