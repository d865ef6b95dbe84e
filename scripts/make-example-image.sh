#!/usr/bin/env bash
# Builds the example workload's image archive (docker save format): one layer with Debian's
# busybox-static (its shell and httpd), curl with the shared libraries it links (to talk to the
# agent's local API over its Unix socket) and the CGI script that answers HTTP requests; tagged
# localhost/cvm-example/hello:1. No registry is needed, and the same Debian release gives the same
# image ID on every machine and engine.
#   usage: scripts/make-example-image.sh OUT.tar
set -euo pipefail
out=${1:?usage: $0 OUT.tar}
tag=localhost/cvm-example/hello:1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/root

mkdir -p "$root/bin" "$root/etc" "$root/tmp" "$root/www/cgi-bin" "$work/image"
cp /bin/busybox "$root/bin/busybox"
for applet in $(/bin/busybox --list); do
  [ "$applet" = busybox ] || ln -s busybox "$root/bin/$applet"
done
# curl and its ldd closure (loader included), at the paths the loader looks them up.
cp /usr/bin/curl "$root/bin/curl"
for lib in $(ldd /usr/bin/curl | grep -o '/[^ ]*'); do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done
# GET / on port 8080 answers with the measured config and what the agent says over its socket.
cat > "$root/www/cgi-bin/index.cgi" <<'CGI'
#!/bin/sh
# The example workload's answer: the measured config file, the env file's greeting, and the
# agent's /platform answer read through its local API socket (mounted from the VM).
socket=/run/cvm-agent/api/api.sock
printf 'Content-Type: text/plain\r\n\r\n'
printf 'message=%s\n' "$(cat /config/message.txt)"
printf 'greeting=%s\n' "$GREETING"
printf 'agent(%s)=%s\n' "$socket" \
  "$(curl -sS --max-time 10 --unix-socket "$socket" http://agent/platform 2>&1)"
CGI
chmod 0755 "$root/www/cgi-bin/index.cgi"
tar_det() { tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner --format=gnu "$@"; }
(cd "$root" && tar_det -cf "$work/layer.tar" .)
layer=$(sha256sum "$work/layer.tar" | cut -d' ' -f1)
config=$(printf '{"architecture":"amd64","os":"linux","created":"1970-01-01T00:00:00Z","config":{"Env":["PATH=/bin"],"Cmd":["sh"]},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' "$layer")
config_id=$(printf '%s' "$config" | sha256sum | cut -d' ' -f1)
mkdir -p "$work/image/$layer"
mv "$work/layer.tar" "$work/image/$layer/layer.tar"
printf '%s' "$config" > "$work/image/$config_id.json"
printf '[{"Config":"%s.json","RepoTags":["%s"],"Layers":["%s/layer.tar"]}]' "$config_id" "$tag" "$layer" > "$work/image/manifest.json"
tar_det -C "$work/image" -cf "$out" manifest.json "$config_id.json" "$layer"
echo "$out: $tag sha256:$config_id"
