# labsync — make help lists the targets.
SHELL := /bin/bash
GO ?= go
BIN := bin
export CGO_ENABLED ?= 0

.DEFAULT_GOAL := help

.PHONY: help
help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-12s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: build
build: ## build bin/labsync
	$(GO) build -trimpath -o $(BIN)/labsync ./cmd/labsync

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
