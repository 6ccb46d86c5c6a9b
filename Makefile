# fastmail: `make serve` runs the server on the embedded default; `make test` runs the whole suite.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: serve test fuzz fuzz-long compile bench bench-load bench-smtp bench-imap bench-pop3 bench-deps system-deps clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip "setuptools>=77" wheel

# Install (compiling the Cython core) and start: SMTP 2525, submission 2587, submissions 2465, LMTP 2424,
# data in ./fastmail-data, demo user printed on first start.
serve: $(BIN)/python
	$(BIN)/pip install -q .
	$(BIN)/fastmail serve

# Debian packages the tests drive (swaks, fetchmail, curl, mbsync from isync, offlineimap3, the filters clamd
# from clamav-daemon and rspamd, systemd-analyze to verify deploy/fastmail.service, nginx with its mail module
# as the proxy tier of tests/integration/test_cluster.py) or the benchmarks use (postfix's smtp-source).
system-deps:
	@command -v swaks >/dev/null && command -v smtp-source >/dev/null && command -v fetchmail >/dev/null \
	  && command -v curl >/dev/null && command -v mbsync >/dev/null && command -v offlineimap >/dev/null \
	  && command -v clamd >/dev/null && command -v rspamd >/dev/null && command -v systemd-analyze >/dev/null \
	  && command -v nginx >/dev/null && test -e /usr/lib/nginx/modules/ngx_mail_module.so || { \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
	    swaks postfix fetchmail curl ca-certificates libnet-ssleay-perl libauthen-sasl-perl isync offlineimap3 \
	    clamav-daemon rspamd systemd nginx libnginx-mod-mail ; }

# Editable install compiles the core in place (the .so files sit beside their .py twins).
compile: $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	$(BIN)/python setup.py -q build_ext --inplace

test: system-deps compile
	$(BIN)/python -m pytest tests

# The fuzz harnesses alone (tests/fuzz/README.md): the CI profile (derandomized, a couple of minutes), or the
# long one (random seeds, 25x the examples), e.g.
#   make fuzz-long FUZZ_ENV=FASTMAIL_FUZZ_EXAMPLES=20000 FUZZ_ARGS="-k smtp"
fuzz: compile
	$(BIN)/python -m pytest tests/fuzz -q

fuzz-long: compile
	FASTMAIL_FUZZ=long $(FUZZ_ENV) $(BIN)/python -m pytest tests/fuzz -q --hypothesis-show-statistics $(FUZZ_ARGS)

bench: compile
	$(BIN)/python -m pytest bench --benchmark-only --benchmark-columns=min,median,ops

# The SMTP ingress benchmark (issue #3): fastmail vs a private Postfix instance, aiosmtpd (with fsync) and
# smtp-sink, all scenarios, 3 rounds each; table + JSON in bench/results/.  Needs root (Postfix's master).
# Options go in BENCH_ARGS, e.g. make bench-smtp BENCH_ARGS="--quick --scenario a".
bench-smtp: bench-deps compile
	@$(BIN)/python -c 'import aiosmtpd' 2>/dev/null || $(BIN)/pip install -q -e '.[test,bench]'
	$(BIN)/python -m bench.load_smtp $(BENCH_ARGS)

bench-load: bench-smtp

# The IMAP benchmark (issue #4): fastmail vs a private Dovecot instance on the same generated 10,000-message
# mailbox, every op 3 rounds; table + JSON in bench/results/.  Needs root (Dovecot's master).
# Options go in BENCH_ARGS, e.g. make bench-imap BENCH_ARGS="--quick --target dovecot".
bench-imap: bench-deps compile
	$(BIN)/python -m bench.load_imap $(BENCH_ARGS)

# The POP3 benchmark (issue #5): fastmail vs the same private Dovecot instance (protocols imap pop3) on the
# same generated 10,000-message mailbox, plus 10 users with 1,000 messages each; every op 3 rounds; table +
# JSON in bench/results/.  Needs root.  E.g. make bench-pop3 BENCH_ARGS="--quick".
bench-pop3: bench-deps compile
	$(BIN)/python -m bench.load_pop3 $(BENCH_ARGS)

# Debian's postfix package brings smtp-source, smtp-sink and postfix itself (the SMTP peer);
# dovecot-imapd brings dovecot and doveadm (the IMAP peer), dovecot-pop3d its pop3 (the POP3 peer).
bench-deps:
	@command -v smtp-source >/dev/null && command -v smtp-sink >/dev/null && command -v postfix >/dev/null \
	  && command -v dovecot >/dev/null && command -v doveadm >/dev/null && test -x /usr/lib/dovecot/pop3 || { \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
	    postfix dovecot-imapd dovecot-pop3d ; }

clean:
	rm -rf build $(VENV) fastmail/_core/*.c fastmail/_core/*.so *.egg-info
