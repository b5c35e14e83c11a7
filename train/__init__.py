"""elunet.train: see README.md, section 'train'."""
