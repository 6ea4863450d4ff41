"""pytest fixtures for real PAM hosts: pam_wrapper + pamtester, and a private sshd on loopback."""
