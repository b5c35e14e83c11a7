"""elunet.export: see README.md, section 'export'."""
