"""Two fixes to the scripts Jupyter Book 1.x puts on every page (found by tests/browser.py).

1. Sphinx 7.4 (Jupyter Book 1.x needs sphinx~=7.0) writes each inline script that an extension adds
   after the builder starts twice: once with filename None, once with '' (sphinx-doc/sphinx#13402,
   fixed in Sphinx 8.2). sphinx-thebe's inline script declares `const THEBE_JS_URL`, so the second
   copy is a SyntaxError on every page. Keep the first copy of each script.
2. pydata-sphinx-theme starts from `default_mode` = "" when the visitor has no stored choice, and
   logs "Got invalid theme mode" (a console error) on every first visit; `default_mode: auto` in
   `html_context` (see _config.yml) is the theme's own default, written out.
"""

from __future__ import annotations

from sphinx.application import Sphinx


def drop_duplicate_scripts(app: Sphinx, pagename: str, templatename: str, context: dict, doctree) -> None:
    seen: set = set()
    unique = []
    for script in context.get("script_files", []):
        key = (getattr(script, "filename", script) or "", getattr(script, "priority", 0),
               tuple(sorted(getattr(script, "attributes", {}).items())))
        if key not in seen:
            seen.add(key)
            unique.append(script)
    context["script_files"] = unique


def setup(app: Sphinx) -> dict:
    app.connect("html-page-context", drop_duplicate_scripts)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
