"""Where and how frameworks run: child processes (the worker), the agent, targets (local, arm64
emulation, ssh, command) and their set-up.
"""
