"""On PYTHONPATH, makes bitsandbytes believe the CPU has AVX512-BF16, as many servers do: it then looks for the
optional `kernels` package on import and, not finding it, logs its fallback notice (the noise shared/logs.py drops).
"""

import importlib.abc
import importlib.machinery
import sys


class PretendAvx512Bf16(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "bitsandbytes.functional":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        load = spec.loader.exec_module

        def exec_module(module):
            load(module)
            module.has_avx512bf16 = lambda: True

        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, PretendAvx512Bf16())
