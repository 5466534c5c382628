"""HTML to PDF with WeasyPrint.

Why WeasyPrint rather than fpdf2: it typesets HTML and CSS (the same theme serves HTML and PDF files), shapes
text with Pango and HarfBuzz so every accent and ligature of any script renders with the system's fonts
(DejaVu here), breaks long tables across pages and repeats their header row on each page, and numbers
pages from CSS. fpdf2 draws at coordinates: tables, wrapping and page breaks would be ours to write.

Nothing is fetched while rendering: only ``data:`` URLs load, so an image link in a model's answer can
neither reach the network (SSRF) nor read local files.
"""

from __future__ import annotations

from weasyprint import HTML
from weasyprint.urls import URLFetcher


def render_pdf(html: str) -> bytes:
    fetcher = URLFetcher(allowed_protocols={"data"}, fail_on_errors=False)
    return HTML(string=html, base_url="about:blank", url_fetcher=fetcher).write_pdf()
