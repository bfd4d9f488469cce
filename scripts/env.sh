# Sourced by the scripts: puts the Swift toolchain on PATH.
for d in /opt/swift/usr/bin /usr/share/swift/usr/bin; do
  [ -x "$d/swift" ] && case ":$PATH:" in *":$d:"*) ;; *) PATH="$d:$PATH";; esac
done
export PATH
