"""Lab helpers for tests, the demo and benchmarks: a throwaway realm, PAM hosts, a private sshd."""
