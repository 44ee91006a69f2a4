"""Pictures memprune writes: image grids (Pillow only) and the scoring report's figures (matplotlib).

``grid`` draws the audit's extraction grid and FID sample sheets from plain data; ``figures`` draws the
``memprune report`` charts from a :class:`~memprune.scoring.report.Report`.
"""

from memprune.plots.grid import GridRow, class_name, render_extraction_grid, render_sample_grid, safe_name

__all__ = ["GridRow", "class_name", "render_extraction_grid", "render_sample_grid", "safe_name"]
