"""pytest fixtures around the throwaway MIT realm (krb5/ bootstrap)."""
