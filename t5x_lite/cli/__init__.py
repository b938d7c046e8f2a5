"""The command line: one parser per command, and the entry point that dispatches to it."""
