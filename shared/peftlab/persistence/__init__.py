"""Everything peftlab writes and reads back: atomic writes, safe loading of
torch files, Lightning checkpoints and the adapter format."""
