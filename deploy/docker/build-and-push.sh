#!/usr/bin/env bash
# Builds ffx's images and pushes them to a registry: what a CI job runs on a tag (no images are
# published; this makes yours).
#   deploy/docker/build-and-push.sh REGISTRY/ffx [--tag TAG] [--only cpu|gpu] [--no-push]
# e.g. deploy/docker/build-and-push.sh registry.example.com/ffx --only cpu
# Each image gets two tags: REPO:cpu-TAG (or gpu-TAG) and REPO:cpu (gpu), the one the
# Kubernetes overlays name. TAG defaults to the package version and the commit,
# e.g. 0.1.0-1a2b3c4 (with -dirty for uncommitted changes). Log in first (docker login).
# The GPU image downloads libtensorflow while it builds: it needs the network.
set -euo pipefail
cd "$(dirname "$0")/../.."

usage() {
  sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

repo=''
tag=''
only=''
push=1
while [ $# -gt 0 ]; do
  case "$1" in
    --tag) tag="${2:?--tag needs a value}"; shift 2 ;;
    --only) only="${2:?--only needs cpu or gpu}"; shift 2 ;;
    --no-push) push=0; shift ;;
    -h|--help) usage ;;
    -*) echo "build-and-push: unknown option $1" >&2; usage ;;
    *) [ -z "$repo" ] || { echo "build-and-push: one repository, got $repo and $1" >&2; usage; }
       repo="$1"; shift ;;
  esac
done
[ -n "$repo" ] || usage
case "$only" in ''|cpu|gpu) ;; *) echo "build-and-push: --only takes cpu or gpu, got $only" >&2; exit 2 ;; esac
if [ -z "$tag" ]; then
  version="$(node -p "require('./package.json').version")"
  commit="$(git rev-parse --short HEAD)"
  dirty="$(git status --porcelain --untracked-files=no | grep -q . && echo -dirty || true)"
  tag="${version}-${commit}${dirty}"
fi

for kind in cpu gpu; do
  [ -z "$only" ] || [ "$only" = "$kind" ] || continue
  echo "== ffx:$kind -> $repo:$kind-$tag, $repo:$kind"
  docker build -f "deploy/docker/Dockerfile.$kind" \
    --label "org.opencontainers.image.version=$tag" \
    -t "$repo:$kind-$tag" -t "$repo:$kind" .
  if [ "$push" = 1 ]; then
    docker push "$repo:$kind-$tag"
    docker push "$repo:$kind"
  fi
done
