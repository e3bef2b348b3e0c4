# labsync — make help lists the targets.
SHELL := /bin/bash
GO ?= go
BIN := bin
export CGO_ENABLED ?= 0

.DEFAULT_GOAL := help

.PHONY: help
help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-14s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

# Stamped into both commands (labsync version); override with make build VERSION=v1.2.3.
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT ?= $(shell git rev-parse HEAD 2>/dev/null)
LDFLAGS = -X main.version=$(VERSION) -X main.commit=$(COMMIT)
IMAGE ?= labsync
CA_CERTS ?= /etc/ssl/certs/ca-certificates.crt

.PHONY: build
build: ## build bin/labsync and bin/labsync-agent: static, version-stamped
	$(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN)/ ./cmd/labsync ./cmd/labsync-agent

.PHONY: labsync-agent
labsync-agent: ## build bin/labsync-agent only (to copy into a lab's agent image)
	$(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN)/labsync-agent ./cmd/labsync-agent

# The image is the Dockerfile's last stage (FROM scratch), built from a
# context that holds what its build stage would have made, here made with
# the local Go toolchain and CA certificates, so nothing is pulled.
.PHONY: image
image: ## build the image labsync:VERSION and labsync:latest (the Dockerfile's FROM scratch stage) with the local Go toolchain
	@set -euo pipefail; \
	test -r "$(CA_CERTS)" || { echo "make image: no CA certificates at $(CA_CERTS); set CA_CERTS=/path/to/bundle.crt"; exit 1; }; \
	ctx=$$(mktemp -d); trap 'rm -rf "$$ctx"' EXIT; \
	mkdir -p "$$ctx/out" "$$ctx/etc/ssl/certs"; \
	$(GO) build -trimpath -ldflags "-s -w $(LDFLAGS)" -o "$$ctx/out/" ./cmd/labsync ./cmd/labsync-agent; \
	cp "$(CA_CERTS)" "$$ctx/etc/ssl/certs/ca-certificates.crt"; \
	sed -n '/^FROM scratch/,$$p' Dockerfile | sed 's/--from=build //' >"$$ctx/Dockerfile"; \
	buildkit=0; docker buildx version >/dev/null 2>&1 && buildkit=1; \
	out=$$(DOCKER_BUILDKIT=$$buildkit docker build --build-arg VERSION=$(VERSION) --build-arg COMMIT=$(COMMIT) \
	  -t $(IMAGE):$(VERSION) -t $(IMAGE):latest "$$ctx" 2>&1) || { echo "$$out"; exit 1; }; \
	echo "built $(IMAGE):$(VERSION) and $(IMAGE):latest: $$(docker run --rm $(IMAGE):$(VERSION) version)"

.PHONY: test
test: ## set up what the tests need (Docker), then vet and run every test
	@scripts/test-setup.sh
	$(GO) vet ./...
	$(GO) test -count=1 -p 2 -timeout 20m ./...

.PHONY: test-short
test-short: ## unit tests only, no Docker
	$(GO) test -count=1 -short ./lab/... ./testflinger/... ./internal/yamlcheck/...

FUZZTIME ?= 60s

.PHONY: fuzz
fuzz: ## run every fuzz target (lab loader, compose reader, webhook and MQTT submit parsers) for FUZZTIME (60s) each
	@set -e; for pkg in $$(grep -rl --include='*_test.go' '^func Fuzz' . | xargs -n1 dirname | sort -u); do \
	  for target in $$(grep -h '^func Fuzz' $$pkg/*_test.go | sed 's/func \(Fuzz[A-Za-z0-9_]*\).*/\1/'); do \
	    echo "== $$target ($$pkg)"; \
	    $(GO) test -run '^$$' -fuzz "^$$target\$$" -fuzztime $(FUZZTIME) $$pkg; \
	  done; \
	done

.PHONY: soak
soak: ## fault and crash suites in full: 6 seeds of a 20-agent lab through a faulty Docker API, labsync killed at every crash point (slow)
	@scripts/test-setup.sh
	@set -o pipefail; LABSYNC_SOAK=1 $(GO) test -count=1 -v -timeout 60m -run 'TestFault|TestCrash' ./internal/testenv/ ./reconciler/ ./cmd/labsync/ 2>&1 | \
	  grep -E '^(ok|FAIL|PASS|panic)|^\s*--- |passes to converge|killed at|fault_test.go|crash_test.go|faultproxy.go'

.PHONY: lint
lint: ## gofmt, go vet and staticcheck
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2 ./...

.PHONY: demo
demo: ## converge a demo lab on this Docker host (3 agents, 1 service), then change one SUT
	@scripts/demo.sh

.PHONY: demo-clean
demo-clean: ## remove everything the demo created
	@scripts/demo.sh clean

.PHONY: bench
bench: ## benchmarks: planning, polling, webhook to running agent, MQTT latency and volume, a no-op plan against 500 agents (slow)
	@scripts/test-setup.sh
	$(GO) test -run '^$$' -bench . -benchtime 20x ./reconciler/ ./lab/ ./gitsource/
	$(GO) test -run '^$$' -bench 'WebhookToRunning|StateChangeToMQTT' -benchtime 10x ./cmd/labsync/
	$(GO) test -run '^$$' -bench MQTTMessagesPerPass -benchtime 3x -timeout 20m ./cmd/labsync/
	scripts/bench-plan.sh 500

.PHONY: clean
clean: ## remove build output
	rm -rf $(BIN) .demo
