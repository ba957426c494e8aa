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

## bench: end-to-end import benchmarks against Dovecot, the Graph fake and JetStream (output also in bench-results/bench.txt)
bench: test-deps
	@mkdir -p bench-results
	@MAILPIPE_BENCH=1 $(GO) test $(BENCH_FLAGS) ./internal/bench/ > bench-results/bench.txt 2>&1; status=$$?; \
	cat bench-results/bench.txt; \
	echo; echo "one run each; Import*: importer subprocess (wall time from process start to exit);"; \
	echo "GraphImport*: importer in-process against the Graph fake throttled to 100 requests/10s and 4 in flight per mailbox (ceiling 5 msgs/s/mailbox):"; \
	awk '/^Benchmark/ { name = $$1; sub(/^Benchmark/, "", name); sub(/-[0-9]+$$/, "", name); line = sprintf("  %-30s", name); \
		for (i = 3; i < NF; i += 2) { v = $$i; u = $$(i+1); \
			if (u == "ns/op") line = line sprintf("  %7.2f s", v / 1e9); \
			else if (u == "msgs/s") line = line sprintf("  %7.0f msgs/s", v); \
			else if (u == "MB/s") line = line sprintf("  %6.1f MB/s", v); \
			else if (u == "peak_rss_MB") line = line sprintf("  peak RSS %5.1f MB", v); \
			else if (u == "msgs/s/mailbox") line = line sprintf("  %5.2f msgs/s/mailbox", v); \
			else if (u == "pct_of_ceiling") line = line sprintf(" (%5.1f%% of ceiling)", v); \
			else if (u == "req/msg") line = line sprintf("  %5.3f req/msg", v); } \
		print line }' bench-results/bench.txt; \
	exit $$status

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
