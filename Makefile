# make install: the binary, the mount(8) helper, the systemd units and the tmpfiles entry.
PREFIX ?= /usr/local
DESTDIR ?=

.PHONY: build install uninstall test demo

build:
	cargo build --release

install: build
	install -D -m 0755 target/release/orasfs $(DESTDIR)$(PREFIX)/bin/orasfs
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
