"""The data path: seqio Tasks into sharded, resumable batches, and vocabularies."""
