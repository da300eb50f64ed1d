"""Sources: what a backup reads (folders, streams from dump tools) and how each restores."""
