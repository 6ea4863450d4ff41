# The two commands of the README: `make demo` and `make test`.  Both run
# `make setup` first, which installs what they need on a fresh Debian 12.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: setup test lint demo bench clean install uninstall

setup:
	@bash scripts/setup.sh

lint: setup
	$(VENV)/bin/ruff check pam_keyinit_py tests bench scripts

# pytest's exit code 5 means no test ran: that is a failure here, not a pass.
test: setup lint
	@$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; exit $$rc

demo: setup
	@$(VENV)/bin/keyinit demo

bench: setup
	@$(PY) bench/run.py

clean:
	rm -rf $(VENV) build *.egg-info pam_keyinit_py/keyutils/_keyutils*.so pam_keyinit_py/keyutils/_keyutils.c \
		pam_keyinit_py/tickets/_krb5_renew*.so pam_keyinit_py/tickets/_krb5_renew.c

# The PAM hook for /usr/bin/python3 (pam_python.so's interpreter): a venv in $(PREFIX) and the shim
# /lib/security/pam_keyinit_py.py.  DESTDIR stages both elsewhere.
PREFIX ?= /opt/pam-keyinit-py
DESTDIR ?=
install: setup
	$(PY) -m pam_keyinit_py.cli install --prefix "$(PREFIX)" --root "$(DESTDIR)"

uninstall: setup
	$(PY) -m pam_keyinit_py.cli uninstall --prefix "$(PREFIX)" --root "$(DESTDIR)"
