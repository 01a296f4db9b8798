"""The resident per-host agent (``python -m lxcone.agent``): keeps the driver loaded and runs
the VMM actions that the thin client in remotes/vmm/lxcone/ forwards over a unix socket.
See docs/agent.md."""
