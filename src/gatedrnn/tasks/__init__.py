"""Tasks built on gatedrnn; each module reads top to bottom: data → model → loop → checkpoint → report."""
