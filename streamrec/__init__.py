"""streamrec: a streaming, event-driven sequential recommender.

The repository keeps the product's three packages at its top (``streams/``, ``model/``,
``storage/``); ``pyproject.toml`` installs them as ``streamrec.streams``, ``streamrec.model`` and
``streamrec.storage`` (setuptools ``package-dir``), so nothing with a generic name lands in
site-packages. Dependencies point one way: ``streams`` may use ``model`` and ``storage``;
``model`` and ``storage`` never import ``streams``.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("streamrec")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
