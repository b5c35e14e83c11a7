"""elunet.serve: see README.md, section 'serve'."""
