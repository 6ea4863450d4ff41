"""Real PAM hosts for tests, benchmarks and the demo: pam_wrapper + pamtester, and a private sshd."""
