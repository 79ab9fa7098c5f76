"""shardspec: a declarative spec runner for PyTorch DTensor sharding on XLA.

The import package is ``runner``; the distribution and the command are ``shardspec``.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("shardspec")
except PackageNotFoundError:  # running from a checkout that is not installed
    __version__ = "0+unknown"
