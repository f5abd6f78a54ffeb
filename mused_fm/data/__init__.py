"""Shard schema, storage (folder or S3), writer and readers shared by shards_tools and the trainer."""
