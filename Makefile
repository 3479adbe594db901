# make install: the binary, the mount(8) helper, the systemd units and the tmpfiles entry.
# `make install-files BIN=path/to/orasfs DESTDIR=root` installs an already built binary
# (tests/systemd/check.sh installs the debug build into its container that way).
PREFIX ?= /usr/local
DESTDIR ?=
CARGO_TARGET_DIR ?= target
BIN ?= $(CARGO_TARGET_DIR)/release/orasfs

.PHONY: build install install-files uninstall test demo

build:
	cargo build --release

install: build install-files

install-files:
	install -D -m 0755 $(BIN) $(DESTDIR)$(PREFIX)/bin/orasfs
	install -d $(DESTDIR)/sbin
	ln -sf $(PREFIX)/bin/orasfs $(DESTDIR)/sbin/mount.orasfs
	install -D -m 0644 systemd/orasfs@.service $(DESTDIR)/etc/systemd/system/orasfs@.service
	install -D -m 0644 systemd/orasfs.tmpfiles.conf $(DESTDIR)/etc/tmpfiles.d/orasfs.conf
	install -d $(DESTDIR)/etc/orasfs

uninstall:
	rm -f $(DESTDIR)$(PREFIX)/bin/orasfs $(DESTDIR)/sbin/mount.orasfs
	rm -f $(DESTDIR)/etc/systemd/system/orasfs@.service $(DESTDIR)/etc/tmpfiles.d/orasfs.conf

test:
	scripts/test.sh

demo:
	scripts/demo.sh
