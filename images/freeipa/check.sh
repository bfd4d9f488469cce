#!/bin/bash
# Checks a running FreeIPA-shaped machine from inside its namespaces.
#
# usage: PASSWORD=… check.sh LEADER_PID
#   LEADER_PID  the machine's PID 1 as the host sees it
#   PASSWORD    the install password (testuser's Kerberos password)
#
# Runs the checks with nsenter in all of the machine's namespaces (no machined
# or systemd is needed on the host): boot state, LDAP search of the suffix,
# kinit, a GSSAPI LDAP bind, LDAPS, listeners on the declared ports, HTTP and
# HTTPS, the zone's SOA and SRV records from the machine's own named, an SSSD
# user lookup, no install secrets left in /run/ipa, certmonger's tracking.
# Prints one "ok"/"not ok" line per check; exits 0 only when all pass. A
# service that is still starting gets a few seconds (CHECK_RETRIES x 0.2 s).
set -euo pipefail

die() { echo "check.sh: $*" >&2; exit 2; }
[ $# = 1 ] && [[ $1 =~ ^[0-9]+$ ]] || die "usage: PASSWORD=… $0 LEADER_PID"
pid=$1
[ -d "/proc/$pid" ] || die "no process $pid"
[ -n "${PASSWORD:-}" ] || die "PASSWORD is not set"
retries=${CHECK_RETRIES:-50}

# The script runs in the machine; the password reaches it on fd 3, never argv.
read -r -d '' inner <<'INNER' || true
set -uo pipefail
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C
IFS= read -r password <&3
failed=0
# check NAME EXPECTED_REGEX COMMAND...: retries until the output matches.
check() {
    local name=$1 want=$2 out='' n=0
    shift 2
    while :; do
        out=$("$@" 2>&1) && [[ $out =~ $want ]] && { echo "ok - $name"; return 0; }
        n=$((n + 1))
        [ $n -lt "$RETRIES" ] || break
        sleep 0.2
    done
    echo "not ok - $name: $(echo "$out" | tail -n 3 | tr '\n' ' ')"
    failed=1
    return 1
}
# Right after launch PID 1 may not listen on its private socket yet: retry
# until systemctl reaches it, then wait for the boot to finish.
for _ in $(seq 200); do
    state=$(timeout 600 systemctl is-system-running --wait 2>&1)
    case $state in
        offline|*"Failed to connect"*) sleep 0.05 ;;
        *) break ;;
    esac
done
if [ "$state" = running ]; then
    echo "ok - systemctl is-system-running: running"
else
    echo "not ok - systemctl is-system-running: $state; failed units: $(systemctl --failed --plain --no-legend | awk '{print $1}' | xargs)"
    failed=1
fi
if [ ! -f /data/var/lib/ipa/configured ]; then
    echo "not ok - /data/var/lib/ipa/configured is missing: the machine is not configured"
    exit 1
fi
. /data/var/lib/ipa/configured
echo "# realm $REALM, domain $DOMAIN, host $FQDN, mode $(cat /run/ipa/mode 2>/dev/null)"
check "ldapsearch of $SUFFIX" "dn: uid=testuser,ou=people,$SUFFIX" \
    ldapsearch -LLL -x -H "ldap://$FQDN" -b "$SUFFIX" '(uid=testuser)' dn
export KRB5CCNAME=FILE:/tmp/check-cc.$$
trap 'kdestroy -q 2>/dev/null; rm -f /tmp/check-cc.$$' EXIT
kinit_testuser() { printf '%s\n' "$password" | kinit "testuser@$REALM" >/dev/null && klist; }
check "kinit testuser@$REALM" "krbtgt/$REALM@$REALM" kinit_testuser
check "GSSAPI ldapwhoami" "^dn: ?uid=testuser,ou=people,$SUFFIX" \
    ldapwhoami -Q -Y GSSAPI -H "ldap://$FQDN"
check "GSSAPI ldapsearch" "dn: uid=testuser,ou=people,$SUFFIX" \
    ldapsearch -LLL -Q -Y GSSAPI -H "ldap://$FQDN" -b "$SUFFIX" '(uid=testuser)' dn
check "LDAPS on 636" "dn: $SUFFIX" env LDAPTLS_REQCERT=allow \
    ldapsearch -LLL -x -H "ldaps://$FQDN" -b "$SUFFIX" -s base dn
# Every port the image declares (but 123/udp: no NTP server) has a listener.
listening() {
    local want have missing=''
    have=$(ss -Hlntu | awk '{split($5, a, ":"); print a[length(a)] "/" $1}' | sort -u)
    for want in 53/tcp 53/udp 80/tcp 443/tcp 389/tcp 636/tcp 88/tcp 88/udp 464/tcp 464/udp; do
        grep -qx "${want%/*}/${want#*/}" <<<"$have" || missing+=" $want"
    done
    echo "missing:${missing:- none}"
}
check "listeners on the declared ports" '^missing: none$' listening
check "HTTP on 80" '<html' curl -fsS http://localhost/
check "HTTPS on 443" '<html' curl -fsS --cacert /etc/ipa/http.crt --resolve "$FQDN:443:127.0.0.1" "https://$FQDN/"
check "DNS SOA $DOMAIN" "^$FQDN\\. hostmaster\\.$DOMAIN\\. " dig +short @127.0.0.1 SOA "$DOMAIN"
check "DNS SRV _kerberos._udp.$DOMAIN" "^0 100 88 $FQDN\\.$" dig +short @127.0.0.1 SRV "_kerberos._udp.$DOMAIN"
check "DNS SRV _ldap._tcp.$DOMAIN" "^0 100 389 $FQDN\\.$" dig +short @127.0.0.1 SRV "_ldap._tcp.$DOMAIN"
check "SSSD: getent passwd testuser" '^testuser:\*:10001:10001:Test User:/home/testuser:/bin/bash$' \
    getent -s sss passwd testuser
no_secrets() {
    local f
    for f in /run/ipa/environ /run/ipa/dscreate.inf /run/ipa/dm.pw; do [ ! -e "$f" ] || echo "left: $f"; done
    echo checked
}
check "no install secrets left in /run/ipa" '^checked$' no_secrets
check "certmonger tracks the HTTP certificate" 'status: MONITORING' getcert list -f /etc/ipa/http.crt
exit $failed
INNER

exec nsenter -t "$pid" -a -r -w /usr/bin/env -i RETRIES="$retries" /bin/bash -c "$inner" 3<<<"$PASSWORD"
