"""The pumprig command line: the whole stack in one process, and tools that talk to a running rig."""
