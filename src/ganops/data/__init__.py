"""Data in: the download stage, the IDX format, the prepare stage and the data/prepared format."""
