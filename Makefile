# cleanroom — the two commands a new user needs:
#   make demo   run the whole product on this machine (installs what it needs)
#   make test   run every test (unit + root/integration), as CI does
# Both run as root on Debian bookworm with only the Go toolchain preinstalled.

SHELL := /bin/bash
GO ?= go
export GOFLAGS ?= -mod=mod
WORK ?= $(CURDIR)/.work
BIN := $(CURDIR)/bin
STATICCHECK_VERSION := v0.8.2
export CLEANROOM_CACHE ?= /var/cache/cleanroom
TOOLS := $(CLEANROOM_CACHE)/tools/staticcheck-$(STATICCHECK_VERSION)

DEBIAN_PACKAGES := containerd runc iptables conntrack debootstrap e2fsprogs iproute2 iputils-ping util-linux git ca-certificates tcpdump bc chromium fonts-dejavu-core postgresql
# PostgreSQL's binaries are not on PATH: deps checks for initdb where Debian
# puts it. The tests never use Debian's own cluster (if the package made and
# started one, it is left alone): scripts/postgres.sh runs a private one.
POSTGRES_BIN := /usr/lib/postgresql/15/bin
DEBIAN_COMMANDS := containerd runc iptables conntrack debootstrap mkfs.ext4 ip ping nsenter git bc chromium

.PHONY: all build install deps tools lint test test-unit bench image demo clean containerd-start containerd-stop postgres-start postgres-stop help

all: build

help:
	@echo "make demo    run the whole product end to end (KEEP=1 keeps it running)"
	@echo "make test    lint + every test, with a private containerd (root)"
	@echo "make bench   benchmarks, side by side with their baselines (root)"
	@echo "make build   build bin/cleanroom"
	@echo "make install install it to \$$(PREFIX)/bin (/usr/local/bin) and the systemd units, not enabled"
	@echo "make image   build the node sandbox image into the private containerd"

# build stamps the version (git describe) and commit into the binary:
# `cleanroom version`, --version and the cleanroom_build_info metric show them.
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
COMMIT ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
VERSION_PKG := github.com/cleanroom-ci/cleanroom/internal/version
LDFLAGS := -X $(VERSION_PKG).version=$(VERSION) -X $(VERSION_PKG).commit=$(COMMIT)

build:
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/cleanroom ./cmd/cleanroom

# install puts the binary in $(DESTDIR)$(PREFIX)/bin and the systemd units
# (dist/systemd, pointed at that binary) in $(DESTDIR)$(SYSTEMD_UNIT_DIR),
# without enabling or starting them. systemd-analyze verify checks the units
# when it is installed.
PREFIX ?= /usr/local
DESTDIR ?=
SYSTEMD_UNIT_DIR ?= /etc/systemd/system
UNITS := cleanroom-server.service cleanroom-agent.service

install: build
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(SYSTEMD_UNIT_DIR)
	install -m 0755 $(BIN)/cleanroom $(DESTDIR)$(PREFIX)/bin/cleanroom
	@for u in $(UNITS); do \
		sed 's|/usr/local/bin/cleanroom|$(PREFIX)/bin/cleanroom|g' dist/systemd/$$u > $(DESTDIR)$(SYSTEMD_UNIT_DIR)/$$u && \
		chmod 0644 $(DESTDIR)$(SYSTEMD_UNIT_DIR)/$$u && echo "installed $(DESTDIR)$(SYSTEMD_UNIT_DIR)/$$u" || exit 1; \
	done
	@if [ -z "$(DESTDIR)" ] && command -v systemd-analyze >/dev/null 2>&1; then \
		for u in $(UNITS); do systemd-analyze verify --man=no $(SYSTEMD_UNIT_DIR)/$$u 2>&1 | grep -v -e containerd.service -e 'Cannot add dependency' || true; done; \
	fi
	@echo "enable them with: systemctl daemon-reload && systemctl enable --now cleanroom-server (docs/operations.md)"

# deps installs the Debian packages the product and its tests need, only when
# something is missing (apt-get update runs at most once per call).
deps:
	@missing=""; for c in $(DEBIAN_COMMANDS); do command -v $$c >/dev/null 2>&1 || missing="$$missing $$c"; done; \
	if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then missing="$$missing node"; fi; \
	[ -x $(POSTGRES_BIN)/initdb ] || missing="$$missing postgresql"; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages (missing:$$missing)"; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get update -qq && apt-get install -y -qq --no-install-recommends $(DEBIAN_PACKAGES) >/dev/null || exit 1; \
		if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null || exit 1; fi; \
	fi

tools: $(TOOLS)/staticcheck

$(TOOLS)/staticcheck:
	GOBIN=$(TOOLS) $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)

lint: tools
	@out=$$(gofmt -l $$(git ls-files '*.go' | grep -v '^vendor/')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(TOOLS)/staticcheck ./...

containerd-start: deps
	@scripts/containerd.sh start >/dev/null

containerd-stop:
	@scripts/containerd.sh stop

# postgres-start prints the DSN of the private test PostgreSQL.
postgres-start: deps
	@scripts/postgres.sh start

postgres-stop:
	@scripts/postgres.sh stop

image: deps build containerd-start
	CLEANROOM_CONTAINERD_ADDRESS=$$(scripts/containerd.sh address) $(BIN)/cleanroom image build

test-unit:
	$(GO) test -race -count=1 ./...

# test: lint, then every test as root against a private containerd that is
# started here and always stopped, pass or fail.
test: deps lint build
	scripts/test.sh

bench: deps build
	scripts/bench.sh

demo: deps build
	scripts/demo.sh

clean: containerd-stop postgres-stop
	rm -rf $(BIN) $(WORK)
