# The two entry points. Each installs what it needs (libtorch into .venv, the test cluster's
# binaries into ~/.cache/frugal) and caches it for the next run.
.PHONY: quickstart test crds images plugin-release e2e-kind

quickstart: ## train the quick-start job on its embedded default (synthetic data, CPU) and report
	@bash scripts/quickstart.sh

test: ## every test: unit, contract and CEL, trainer on CPU, and end to end on a local control plane
	@bash scripts/test.sh

crds: ## regenerate crds/ and the chart's copy from the API types
	@bash -c 'source scripts/env.sh && for d in crds charts/frugal/crds; do cargo run -q -p frugal-operator -- crd --dir $$d; done'

e2e-kind: ## the e2e tests on a kind cluster (offline node image where no registry answers); not part of `make test`
	@bash e2e/kind/run

images: ## the operator and trainer images (cuda and cpu variants) with Docker; see images/README.md
	@bash images/build

plugin-release: ## kubectl-frugal's release archive for krew, its sha256 and the filled-in krew manifest, in dist/
	@bash scripts/plugin-release.sh
