# microgate: build, test and run against a real local Kubernetes control plane.
# `make help` lists the targets.
SHELL := bash
CLUSTER := tests/cluster/cluster.sh

.PHONY: help demo demo-down build crds test test-netns lint fmt cluster cluster-down cluster-status kubelet bench-discovery

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

demo: ## the whole thing on a local control plane: controller, gateway, example services, live traffic
	bash examples/demo.sh

demo-down: ## stop the demo (the control plane keeps running; make cluster-down stops it)
	bash examples/demo.sh down

build: ## build microgate and the test harness
	cargo build --workspace

crds: ## regenerate crds/ from the API types (a test fails when it is stale)
	cargo run -q -- crd > crds/microgate.dev.yaml

test: lint ## everything: format, lints, unit and control-plane tests, then the same in a private network namespace
	cargo test --workspace --no-run
	bash tests/cluster/with-cluster.sh cargo test --workspace
	$(MAKE) --no-print-directory test-netns

test-netns: ## the whole test suite inside a private network namespace (10.200.0.0/16 pod IPs; root)
	cargo test --workspace --no-run
	bash tests/cluster/netns.sh bash tests/cluster/with-cluster.sh cargo test --workspace --offline

lint: ## rustfmt and clippy, warnings as errors
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings

fmt: ## format the code
	cargo fmt --all

cluster: ## start the local control plane (or reuse a running one); writes target/cluster/kubeconfig
	@bash $(CLUSTER) up

cluster-down: ## stop the local control plane; leaves no process behind
	@bash $(CLUSTER) down

cluster-status: ## show whether each control-plane component is up
	@bash $(CLUSTER) status

kubelet: cluster ## play kubelet for every namespace of the local cluster (Ctrl-C stops it)
	cargo run -q -p microgate-test-support --bin fake-kubelet

bench-discovery: ## discovery: readiness → registry propagation percentiles; memory and writes at 1000 Microservices / 10 000 Pods
	cargo build --release --bin microgate
	bash tests/cluster/with-cluster.sh cargo bench --bench discovery
