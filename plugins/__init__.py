"""elunet.plugins: see README.md, section 'plugins'."""
