"""Tasks built on the layers: each module reads top to bottom (data, model, loop, checkpoint, report)."""
