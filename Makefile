# The two commands the README starts with. Both install what they need first.
.PHONY: lab test test-fast lint clean

# Bring the lab up in one process with every example applied (Ctrl-C to stop).
lab:
	scripts/install-deps.sh
	.venv/bin/kubelab up --ephemeral -f examples/

# Install the test dependencies and run the whole suite (e2e parts skip with a reason
# when root, network namespaces or a docker engine are missing).
test:
	scripts/install-deps.sh --test
	scripts/lint-imports.sh
	.venv/bin/pytest

lint:
	scripts/lint-imports.sh

test-fast:
	.venv/bin/pytest -q tests/unit

clean:
	rm -rf .venv build *.egg-info .state .pytest_cache
