"""Serve MathJax 3 from the built site, so math renders offline.

Sphinx loads MathJax from a CDN by default. This extension copies MathJax's ES5 bundle from the
installed ``django-static-mathjax`` wheel (a PyPI package that ships MathJax 3 as static files;
no Django needed) into ``_static/mathjax/``; ``mathjax_path`` in ``_config.yml`` points there.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from sphinx.application import Sphinx
from sphinx.errors import ExtensionError


def mathjax_bundle() -> Path:
    """The directory that holds tex-chtml.js in the installed MathJax 3 wheel."""
    try:
        import mathjax  # the django-static-mathjax distribution
    except ImportError as error:
        raise ExtensionError(
            "MathJax 3 is not installed: pip install -r requirements.txt (django-static-mathjax)"
        ) from error
    bundle = Path(mathjax.__file__).parent / "static" / "mathjax" / "es5"
    if not (bundle / "tex-chtml.js").is_file():
        raise ExtensionError(f"no tex-chtml.js under {bundle}: unexpected django-static-mathjax layout")
    return bundle


def copy_mathjax(app: Sphinx, exception: Exception | None) -> None:
    if exception is None and app.builder.format == "html":
        shutil.copytree(mathjax_bundle(), Path(app.outdir) / "_static" / "mathjax", dirs_exist_ok=True)


def setup(app: Sphinx) -> dict:
    mathjax_bundle()  # fail at start-up, not after a long build
    app.connect("build-finished", copy_mathjax)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
