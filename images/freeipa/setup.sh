#!/bin/bash
# Runs inside the image (chroot) once the packages and rootfs/ are in place:
# moves every path that holds state onto the /data volume, wires the units and
# masks what makes no sense in a container. See README.md for the contract.
set -euo pipefail

TEMPLATE=/usr/share/ipa-data-template

# Paths whose content is state (multi-user.target.wants: dscreate enables the
# LDAP instance there; the boot itself uses container-ipa.target): each becomes a symlink to /data/PATH, and its
# image content the template that ipa-data copies into an empty /data. The
# root file system itself is never written at run time (it may be read-only).
STATE_PATHS=(
    /etc/dirsrv /var/lib/dirsrv
    /etc/systemd/system/multi-user.target.wants
    /etc/tmpfiles.d
    /etc/krb5.conf /etc/krb5.keytab /etc/krb5kdc /var/lib/krb5kdc
    /etc/bind /var/lib/bind /var/cache/bind
    /etc/sssd /var/lib/sss
    /var/lib/certmonger
    /etc/ldap/ldap.conf
    /etc/hosts
    /etc/ipa /var/lib/ipa
    /var/log /var/tmp
)
mkdir -p "$TEMPLATE"
: >/usr/share/ipa-data-paths
for p in "${STATE_PATHS[@]}"; do
    mkdir -p "$TEMPLATE$(dirname "$p")"
    if [ -e "$p" ] || [ -L "$p" ]; then
        mv "$p" "$TEMPLATE$p"
    elif [[ $p == /etc/krb5.keytab || $p == /etc/krb5.conf || $p == /etc/ldap/ldap.conf ]]; then
        :  # files the first boot writes
    else
        mkdir -p "$TEMPLATE$p"
    fi
    mkdir -p "$(dirname "$p")"
    ln -s "/data$p" "$p"
    echo "${p#/}" >>/usr/share/ipa-data-paths
done
# The journal goes to the volume too.
mkdir -p "$TEMPLATE/var/log/journal"
# Each install makes its own rndc key (the package made one at build time).
rm -f "$TEMPLATE/etc/bind/rndc.key"
# Logs written while the image was built are not the machine's.
find "$TEMPLATE/var/log" -type f -delete
chmod 1777 "$TEMPLATE/var/tmp"
chmod 0700 "$TEMPLATE/etc/ipa"
mkdir -p /data

# The boot: container-ipa.target instead of multi-user.target (no getty, no
# logind); ipa-data prepares /data before anything else reads it.
systemctl set-default container-ipa.target >/dev/null 2>&1
mkdir -p /etc/systemd/system/sysinit.target.wants
ln -sf /usr/lib/systemd/system/ipa-data.service /etc/systemd/system/sysinit.target.wants/ipa-data.service

# Every server starts only after (and only if) the configuration succeeded. Not
# dirsrv@: dscreate starts the instance itself with systemctl, and an ordering
# after the configuration unit would deadlock; the configuration unit starts
# the instance by name on later boots, before sssd.
for unit in krb5-kdc krb5-admin-server named sssd apache2 certmonger; do
    [ -f "/usr/lib/systemd/system/$unit.service" ] || [ -f "/lib/systemd/system/$unit.service" ] \
        || { echo "setup.sh: no $unit.service in the image" >&2; exit 1; }
    mkdir -p "/etc/systemd/system/$unit.service.d"
    cat >"/etc/systemd/system/$unit.service.d/ipa.conf" <<UNIT
# Written by images/freeipa/setup.sh: start after the first-boot configuration.
[Unit]
Requires=ipa-server-configure-first.service
After=ipa-server-configure-first.service
UNIT
done

# Timers and maintenance jobs that make no sense in a container.
systemctl mask apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer \
    e2scrub_all.timer e2scrub_reap.service fstrim.timer >/dev/null 2>&1 || true
for unit in apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer e2scrub_all.timer fstrim.timer; do
    [ ! -e "/lib/systemd/system/$unit" ] || [ -L "/etc/systemd/system/$unit" ] \
        || { echo "setup.sh: could not mask $unit" >&2; exit 1; }
done

# sssd.conf names its responders (services = nss, pam): the socket-activated
# variants would fail on start ("already listed in services") and degrade
# the boot.
for unit in /lib/systemd/system/sssd-*.socket; do
    systemctl mask "$(basename "$unit")" >/dev/null 2>&1
done

# Apache: TLS on 443 with the certificate the first boot makes.
a2enmod -q ssl >/dev/null
a2ensite -q ipa-ssl >/dev/null
