"""Pictures and pages: the thinking GIF, training curves and per-tick plots, the tick viewer."""
