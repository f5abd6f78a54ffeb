"""Shard tools: pack NSD, HCP 7T movie and BIDS sites into WebDataset shards."""
