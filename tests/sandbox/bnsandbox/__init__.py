"""bridgenet sandbox: a Kubernetes API emulator and network-namespace nodes for end-to-end runs."""
