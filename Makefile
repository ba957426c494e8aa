# mailpipe — moves business mail between Microsoft 365 mailboxes and NATS JetStream.

GO        ?= go
BIN       ?= bin
PKGS      ?= ./...
TEST_FLAGS ?= -timeout 20m
BENCH_FLAGS ?= -run '^$$' -bench . -benchtime 1x -timeout 30m

.PHONY: all build test test-deps test-race bench demo lint vet fmt image clean

all: build

## build: compile cmd/importer and cmd/sender into ./bin
build:
	$(GO) build -o $(BIN)/ ./cmd/...

## test-deps: install what the tests need (Dovecot) when missing
test-deps:
	./scripts/install-test-deps.sh

## test: every test, including the ones against a real Dovecot and NATS
test: test-deps
	$(GO) vet $(PKGS)
	$(GO) test $(TEST_FLAGS) $(PKGS)

## test-race: the tests with the race detector
test-race: test-deps
	$(GO) test -race $(TEST_FLAGS) $(PKGS)

## bench: end-to-end import benchmarks against Dovecot and JetStream
bench: test-deps
	MAILPIPE_BENCH=1 $(GO) test $(BENCH_FLAGS) ./internal/bench/

## demo: import sample invoices from a local dev mailbox into embedded NATS
demo:
	$(GO) run ./cmd/importer demo --dir .demo

## lint: gofmt and go vet
lint: vet
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet $(PKGS)

fmt:
	gofmt -w $$(git ls-files '*.go')

clean:
	rm -rf $(BIN) .demo

## image: container image with both workers (needs a Docker engine)
image:
	docker build -t mailpipe:dev .
