"""The `clipforge` command line."""
