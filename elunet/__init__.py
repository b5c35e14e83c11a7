"""elunet: ELU networks from a training run to a verified production endpoint.

The stages live at the repository root and import as ``elunet.train``,
``elunet.export``, ``elunet.serve`` and ``elunet.plugins``; this package holds
only what every stage shares (the model card, the contracts, the model
repository layout, the CLI root).
"""

__version__ = "0.1.0"
