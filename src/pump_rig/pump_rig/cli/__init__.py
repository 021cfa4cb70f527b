"""The pumprig command line: the whole stack in one process, and tools for a running rig."""
