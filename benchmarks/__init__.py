"""Speed and paper-benchmark runners (``python benchmarks/run.py --suite …``; see README).

A package, installed with the framework, so that its scripts import each other as
``benchmarks.<name>`` whether run as ``python benchmarks/<name>.py`` or imported by the tests.
"""
