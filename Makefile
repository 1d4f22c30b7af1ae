# boardvisor — build, test and tooling. `make test` is what CI runs (through .ci/run).

GO          ?= go
BIN         := $(CURDIR)/.bin
STATICCHECK := $(BIN)/staticcheck
# Pinned tool versions. staticcheck 0.8.x is the first line that understands Go 1.26.
STATICCHECK_VERSION := v0.8.2
# Short fuzz runs in `make test`: package:target pairs, and how long each runs.
FUZZ_TARGETS := ./images:FuzzParse ./jobs:FuzzHookLines ./supervisor/config:FuzzParse ./jobs/journal:FuzzDecodeRecord ./connector/grpc:FuzzServerStream ./connector/grpc:FuzzClientRecv ./connector/grpc:FuzzDecodeRun ./supervisor/exporter:FuzzAuthorize ./coordinator:FuzzParseSelector ./coordinator:FuzzDecodeLogPos ./coordinator:FuzzConsoleLogJSON ./web:FuzzSessionCookie
# An execution count, not a duration: a duration runs under a deadline that a loaded
# machine can make the fuzzer report as a failure ("context deadline exceeded").
FUZZTIME     ?= 20000x

# The commit the binary reports (boardvisor version), for builds where Go stamps none.
LDFLAGS := -X main.commit=$(shell git rev-parse HEAD 2>/dev/null)
GOBUILD  = $(GO) build -buildvcs=auto -ldflags "$(LDFLAGS)"
# The hook shim is linked statically: a dynamically linked one (cgo, through net) spends
# about 1 ms of CPU per hook in the dynamic loader and libc's start (docs/architecture.md, Hooks).
SHIMBUILD = CGO_ENABLED=0 $(GOBUILD)

GOFILES = $(shell git ls-files '*.go' 2>/dev/null || find . -name '*.go' -not -path './.bin/*')

.PHONY: all build test fmt-check vet staticcheck unit fuzz proto proto-check bench demo man clean

all: build

## build: compile every package and the boardvisor binary into ./bin
build:
	$(GO) build ./...
	@if [ -d cmd/boardvisor ]; then $(GOBUILD) -o bin/boardvisor ./cmd/boardvisor && echo "built bin/boardvisor"; fi
	@# The hook shim's own small binary: the daemon uses it when it lies next to it.
	$(SHIMBUILD) -o bin/boardvisor-shim ./cmd/boardvisor-shim

## test: everything CI checks: formatting, vet, staticcheck, generated code, race tests, fuzz
test: fmt-check vet staticcheck proto-check unit fuzz
	@echo "make test: all checks passed"

fmt-check:
	@out=$$(gofmt -l $(GOFILES)); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet ./...

$(STATICCHECK):
	GOBIN=$(BIN) $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)

staticcheck: $(STATICCHECK)
	$(STATICCHECK) ./...

unit:
	$(GO) test -race -count=1 -timeout 45m ./...
	@# The coordinator's suite again, on PostgreSQL (a private server it starts itself).
	BOARDVISOR_TEST_DB=postgres $(GO) test -race -count=1 ./coordinator/

fuzz:
	@for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; fn=$${t##*:}; \
		echo "fuzz $$fn in $$pkg for $(FUZZTIME)"; \
		$(GO) test -run '^$$' -fuzz "^$$fn$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; \
	done

## proto: regenerate the protobuf Go code (pinned generator versions; needs protoc)
proto:
	scripts/proto.sh

## proto-check: fail if the committed generated code is stale. Without protoc it is
## skipped with a message on a developer's machine and fails under CI.
proto-check:
	@if command -v protoc >/dev/null 2>&1; then scripts/proto.sh --check; \
	elif [ -n "$$CI" ]; then echo "protoc missing: .ci/run should have installed protobuf-compiler"; exit 1; \
	else echo "proto-check skipped: protoc not installed (apt-get install protobuf-compiler)"; fi

## bench: the figures of DESIGN.md §11, with baselines measured in the same run (about 10
## minutes); FLEET_DURATION shortens the fleet scenario's load (e.g. 10s in CI)
FLEET_DURATION ?= 60s
# bench_apt PACKAGE,WHY,ELSE: install a Debian package a scenario needs (with sudo unless
# root), or say what is skipped without it
bench_apt = { echo "installing $(1) ($(2))"; sudo=""; [ "$$(id -u)" = 0 ] || sudo="sudo"; \
	$$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq $(1) >/dev/null; } \
	|| echo "$(1) could not be installed: $(3)"
bench:
	@/usr/bin/python3 -c 'import grpc' 2>/dev/null || $(call bench_apt,python3-grpcio,the idle scenario's baseline,the idle baseline is skipped)
	@command -v ser2net >/dev/null 2>&1 || [ -x /usr/sbin/ser2net ] || $(call bench_apt,ser2net,the console scenario's baseline,the console scenario's ser2net baselines are skipped)
	@command -v docker-registry >/dev/null 2>&1 || $(call bench_apt,docker-registry,the image scenario's loopback registry,the image scenario is skipped)
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || $(call bench_apt,postgresql,the fleet scenario on PostgreSQL,the fleet rows on PostgreSQL are skipped)
	$(GO) build -o bin/boardvisor ./cmd/boardvisor
	CGO_ENABLED=0 $(GO) build -o bin/boardvisor-shim ./cmd/boardvisor-shim
	$(GO) build -o bin/bench ./tests/bench
	./bin/bench -bin bin/boardvisor -out bin/bench-results.json -fleet-duration $(FLEET_DURATION)

## demo: the main job on the embedded default: a coordinator, a supervisor with simulated
## boards, and one scripted lease showing the hook dialogue (KEEP=1 keeps its log)
demo:
	$(GOBUILD) -o bin/boardvisor ./cmd/boardvisor
	$(SHIMBUILD) -o bin/boardvisor-shim ./cmd/boardvisor-shim
	./bin/boardvisor demo $(if $(KEEP),--keep)

## man: regenerate the man pages of every command (docs/man; committed, a test checks
## they are current)
man:
	rm -rf docs/man
	$(GO) run ./cmd/boardvisor gen-man docs/man

clean:
	rm -rf bin
