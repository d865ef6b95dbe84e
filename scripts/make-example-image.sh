#!/usr/bin/env bash
# Builds the example workload's image archive (docker save format) from Debian's busybox-static:
# one layer with /bin/busybox and its applet links, tagged localhost/cvm-example/hello:1.
# Deterministic: the same busybox gives the same image ID on every machine and engine.
#   usage: scripts/make-example-image.sh OUT.tar
set -euo pipefail
out=${1:?usage: $0 OUT.tar}
tag=localhost/cvm-example/hello:1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

mkdir -p "$work/root/bin" "$work/root/etc" "$work/root/tmp" "$work/image"
cp /bin/busybox "$work/root/bin/busybox"
for applet in $(/bin/busybox --list); do
  [ "$applet" = busybox ] || ln -s busybox "$work/root/bin/$applet"
done
tar_det() { tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner --format=ustar "$@"; }
tar_det -C "$work/root" -cf "$work/layer.tar" bin etc tmp
layer=$(sha256sum "$work/layer.tar" | cut -d' ' -f1)
config=$(printf '{"architecture":"amd64","os":"linux","created":"1970-01-01T00:00:00Z","config":{"Env":["PATH=/bin"],"Cmd":["sh"]},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' "$layer")
config_id=$(printf '%s' "$config" | sha256sum | cut -d' ' -f1)
mkdir -p "$work/image/$layer"
mv "$work/layer.tar" "$work/image/$layer/layer.tar"
printf '%s' "$config" > "$work/image/$config_id.json"
printf '[{"Config":"%s.json","RepoTags":["%s"],"Layers":["%s/layer.tar"]}]' "$config_id" "$tag" "$layer" > "$work/image/manifest.json"
tar_det -C "$work/image" -cf "$out" manifest.json "$config_id.json" "$layer"
echo "$out: $tag sha256:$config_id"
