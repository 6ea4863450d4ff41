"""Only here because cffi's ``cffi_modules`` is a setup() keyword."""

from setuptools import setup

setup(cffi_modules=[
    "pam_keyinit_py/keyutils/_build.py:ffibuilder",
    "pam_keyinit_py/tickets/_renew_build.py:ffibuilder",
])
