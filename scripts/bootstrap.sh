# Sourced by scripts/demo and scripts/test: installs what a fresh Debian machine lacks, then the venv.
# Usage: bootstrap [dev]
bootstrap() {
    local extras="${1:-}"
    if ! command -v python3 >/dev/null; then
        echo "scripts: python3 is required (Debian: apt-get install python3)" >&2
        return 1
    fi
    if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
        echo "scripts: Python 3.11 or newer is required, found $(python3 --version 2>&1)" >&2
        return 1
    fi
    local packages=()
    command -v gpg >/dev/null || packages+=(gnupg)
    command -v gpgconf >/dev/null || packages+=(gpgconf)
    command -v openssl >/dev/null || packages+=(openssl)  # S/MIME: CMS through openssl cms (gateway/smime/)
    [ -d .venv ] || python3 -c 'import ensurepip, venv' 2>/dev/null || packages+=(python3-venv)
    # The IMAP tests start their own Dovecot on loopback (gateway/dev/dovecot.py); any system instance the package
    # starts is left alone. Debian puts dovecot in /usr/sbin, which a non-root PATH often lacks.
    [ "$extras" != dev ] || command -v dovecot >/dev/null || [ -x /usr/sbin/dovecot ] || packages+=(dovecot-imapd)
    # The client-matrix tests read the gateway's replies with OpenPGP implementations nobody here wrote: Sequoia
    # (sq) and RNP (rnp, Thunderbird's engine); tests/support/clients.py.
    # Installed on their own and not required here: without them those tests skip with the reason (CI sets
    # GATEWAY_TEST_REQUIRE_CLIENTS and fails instead), so a system that lacks the packages can still run the rest.
    local clients=()
    [ "$extras" != dev ] || command -v sq >/dev/null || clients+=(sq)
    [ "$extras" != dev ] || command -v rnp >/dev/null || clients+=(rnp)
    # The real-border test (tests/border/) runs Postfix with Rspamd as its milter, Unbound as their DNS server
    # and Dovecot's LMTP, all from private folders on loopback ports (tests/support/postfix.py, rspamd.py, dns.py).
    # Likewise optional: without them that test skips (CI sets GATEWAY_TEST_REQUIRE_BORDER and fails instead).
    local border=()
    if [ "$extras" = dev ]; then
        [ -x /usr/sbin/postfix ] || border+=(postfix)
        command -v rspamd >/dev/null || border+=(rspamd)
        [ -x /usr/sbin/unbound ] || border+=(unbound)
        [ -x /usr/lib/dovecot/lmtp ] || border+=(dovecot-lmtpd)
    fi
    # The service test (tests/edges/test_service_sandbox.py) rebuilds the systemd unit's sandbox: bubblewrap,
    # libseccomp for Debian's python3 and systemd-analyze (which lists the unit's allowed system calls). Optional
    # as above (CI sets GATEWAY_TEST_REQUIRE_SANDBOX and fails instead).
    if [ "$extras" = dev ]; then
        command -v bwrap >/dev/null || clients+=(bubblewrap)
        /usr/bin/python3 -c 'import seccomp' 2>/dev/null || clients+=(python3-seccomp)
        command -v systemd-analyze >/dev/null || clients+=(systemd)
    fi
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    if [ "${#packages[@]}" -gt 0 ]; then
        echo "scripts: installing ${packages[*]} with apt-get" >&2
        if ! $sudo apt-get update -qq ||
            ! DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${packages[@]}" >/dev/null; then
            echo "scripts: apt-get could not install ${packages[*]} (its words above); install them by hand" >&2
            return 1
        fi
    fi
    if [ "${#clients[@]}" -gt 0 ]; then
        echo "scripts: installing ${clients[*]} with apt-get (for the client-matrix and service tests)" >&2
        if ! { [ "${#packages[@]}" -gt 0 ] || $sudo apt-get update -qq; } ||
            ! DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${clients[@]}" >/dev/null; then
            echo "scripts: could not install ${clients[*]}: the tests that need them will skip (or fail in CI)" >&2
        fi
    fi
    if [ "${#border[@]}" -gt 0 ]; then
        echo "scripts: installing ${border[*]} with apt-get, their services kept from starting (for the border test)" >&2
        if ! { [ "${#packages[@]}" -gt 0 ] || [ "${#clients[@]}" -gt 0 ] || $sudo apt-get update -qq; } ||
            ! install_without_starting "$sudo" "${border[@]}"; then
            echo "scripts: could not install ${border[*]}: the border test will skip (or fail in CI)" >&2
        fi
    fi
    if [ ! -x .venv/bin/python ]; then
        python3 -m venv .venv
    fi
    # pip and the build backend are chatty even with -q: keep their words unless something fails.
    local log
    log="$(mktemp)"
    local target="."
    [ "$extras" = dev ] && target=".[dev]"
    if ! { .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip &&
        .venv/bin/python -m pip install -q --disable-pip-version-check -e "$target"; } >"$log" 2>&1; then
        cat "$log" >&2
        rm -f "$log"
        echo "scripts: installing the gateway into .venv failed (pip's output above)" >&2
        return 1
    fi
    rm -f "$log"
}

# Usage: install_without_starting SUDO PACKAGE...
# Installs Debian packages whose services must not start: Postfix would start as the machine's mail system (and
# replaces any other installed MTA), Rspamd and Unbound as system services. While apt-get runs, a policy-rc.d
# that answers 101 ("action forbidden") keeps invoke-rc.d and deb-systemd-invoke from starting anything. It is
# removed afterwards; one that was there before (container images often ship one) is set aside meanwhile and put
# back as it was. Postfix's debconf question is answered "No configuration": no /etc/postfix/main.cf is written.
install_without_starting() {
    local sudo="$1"
    shift
    (
        guard=/usr/sbin/policy-rc.d
        saved="$guard.bootstrap-saved"
        if [ -e "$guard" ]; then
            $sudo mv "$guard" "$saved" || exit 1
            trap '$sudo mv -f "$saved" "$guard"' EXIT
        else
            trap '$sudo rm -f "$guard"' EXIT
        fi
        printf '#!/bin/sh\n# scripts/bootstrap.sh: no service starts while test servers are installed.\nexit 101\n' |
            $sudo tee "$guard" >/dev/null && $sudo chmod 755 "$guard" || exit 1
        echo "postfix postfix/main_mailer_type select No configuration" | $sudo debconf-set-selections || exit 1
        $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
    )
}
