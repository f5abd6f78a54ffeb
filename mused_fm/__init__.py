"""MUSED-FM: CLIP-MUSED as a distributed, multi-dataset fMRI decoding trainer."""
