# make install: the binary, the mount(8) helper, the systemd units and the tmpfiles entry.
#
#   make                 # as yourself: cargo build --release
#   sudo make install    # installs what was built; needs no cargo (root has none on PATH)
#
# `make install BIN=path/to/orasfs` installs another build; `make install-files BIN=...
# DESTDIR=root` is the same (tests/systemd/check.sh installs the debug build that way).
PREFIX ?= /usr/local
DESTDIR ?=
CARGO_TARGET_DIR ?= target
BIN ?= $(CARGO_TARGET_DIR)/release/orasfs

.PHONY: build install install-files uninstall test demo

build:
	cargo build --release

# No build here: root under sudo has no cargo, and should not build in the user's tree.
install: install-files

install-files:
	@test -x "$(BIN)" || { echo "make install: $(BIN) is missing: build it first as yourself with 'make', then run 'sudo make install' (or name the binary: sudo make install BIN=PATH)" >&2; exit 1; }
	install -D -m 0755 "$(BIN)" $(DESTDIR)$(PREFIX)/bin/orasfs
	install -d $(DESTDIR)/sbin
	ln -sf $(PREFIX)/bin/orasfs $(DESTDIR)/sbin/mount.orasfs
	install -d $(DESTDIR)/etc/systemd/system
	sed 's|/usr/local|$(PREFIX)|g' systemd/orasfs@.service > $(DESTDIR)/etc/systemd/system/orasfs@.service
	chmod 0644 $(DESTDIR)/etc/systemd/system/orasfs@.service
	install -D -m 0644 systemd/orasfs.tmpfiles.conf $(DESTDIR)/etc/tmpfiles.d/orasfs.conf
	install -d $(DESTDIR)/etc/orasfs
	install -D -m 0644 README.md $(DESTDIR)$(PREFIX)/share/doc/orasfs/README.md

uninstall:
	rm -f $(DESTDIR)$(PREFIX)/bin/orasfs $(DESTDIR)/sbin/mount.orasfs
	rm -f $(DESTDIR)/etc/systemd/system/orasfs@.service $(DESTDIR)/etc/tmpfiles.d/orasfs.conf
	rm -rf $(DESTDIR)$(PREFIX)/share/doc/orasfs

test:
	scripts/test.sh

demo:
	scripts/demo.sh
