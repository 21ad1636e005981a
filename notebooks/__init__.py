"""Not a library: this file only makes pytest import ``notebooks/conftest.py`` as ``notebooks.conftest``.

Without it both ``tests/conftest.py`` and ``notebooks/conftest.py`` would be imported under the module name
``conftest`` (pytest's default "prepend" import mode), the one loaded last shadowing the other for any
``from conftest import ...`` in the tests.
"""
