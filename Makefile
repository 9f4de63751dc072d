# The two commands the README starts with: `make demo` and `make test`.
PY ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo serve test venv clean

$(STAMP): setup.cfg requirements-test.txt
	$(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q --retries 2 -e . -r requirements-test.txt
	touch $(STAMP)

venv: $(STAMP)

# A UEFI and a BIOS VM boot through proxydhcp in network namespaces (root; see tools/demo).
demo:
	tools/debian-deps demo
	$(MAKE) --no-print-directory $(STAMP)
	PYTHON=$(VENV)/bin/python tools/demo

serve:
	tools/debian-deps run
	$(MAKE) --no-print-directory $(STAMP)
	$(VENV)/bin/proxydhcp serve

test:
	tools/debian-deps test
	$(MAKE) --no-print-directory $(STAMP)
	$(VENV)/bin/python -m pytest -q tests

clean:
	rm -rf $(VENV) *.egg-info
