"""Imported once by the render pool's fork server: load the renderers and typeset one small page of each kind,
so that fonts, Pango, HarfBuzz and the template compiler are ready in every worker forked from it.

Importing this module renders files; nothing but the fork server should import it.
"""

from __future__ import annotations

from moteur.files.formats import BY_NAME
from moteur.files.rendering import RenderInput, render_file
from moteur.files.templates import BUILT_INS


def warm_up() -> None:
    """Render a short report in every document format (the first PDF costs the font set-up)."""
    for name in ("pdf", "docx", "html", "markdown"):
        fmt = BY_NAME[name]
        render_file(fmt, BUILT_INS["report"], RenderInput(fmt, text="# Prêt\n\nÉté, œuvre, « déjà »."), "Prêt",
                    None, 1024 * 1024)


try:
    warm_up()
except Exception:  # warming is an optimisation: workers then warm up on their first job
    pass
