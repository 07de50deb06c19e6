"""The `l2i-tf` command line: thin click commands, each calling one library function."""
