"""Pictures of the gates: matplotlib plots (:mod:`.plots`) and the explorer web page (:mod:`.explorer`).

The command line (:mod:`.commands`) adds ``gatedrnn viz gates``, ``gatedrnn viz gradient-flow`` and
``gatedrnn explore``. This package loads neither submodule itself, so that the command line starts without
matplotlib: ``from gatedrnn.viz import plots``.
"""
