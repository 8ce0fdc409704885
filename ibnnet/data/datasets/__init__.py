"""One module per dataset: its on-disk layout, its reader, its label mapping."""
