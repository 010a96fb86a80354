#!/usr/bin/env bash
# Builds etcd, kube-apiserver, kube-scheduler, kube-controller-manager (its resource-claim controller
# makes ResourceClaims from templates in the DRA tests) and kubectl (pinned in go.mod) and helm (pinned in
# helm/go.mod, a sibling module: see there why) and kwok (pinned in kwok/go.mod, likewise; the churn
# benchmark's simulated kubelets) from the Go module proxy into a cache outside git
# (BERTH_K8S_BIN, default ~/.cache/berth/k8s-<version>). Reuses what is already built.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
k8s_version=$(awk '$1=="k8s.io/kubernetes" && $2 ~ /^v/ {print $2; exit}' "$here/go.mod")
bin=${BERTH_K8S_BIN:-$HOME/.cache/berth/k8s-$k8s_version}
mkdir -p "$bin"
cd "$here"
ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$k8s_version -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$(echo "$k8s_version" | cut -d. -f2)"
build() {  # name package
  if [ -x "$bin/$1" ]; then return; fi
  echo "building $1 ($2) ..." >&2
  CGO_ENABLED=0 go build -trimpath -tags=selinux,notest -ldflags "$ldflags" -o "$bin/$1.tmp" "$2"
  mv "$bin/$1.tmp" "$bin/$1"
}
build etcd go.etcd.io/etcd/server/v3
build kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver
build kube-scheduler k8s.io/kubernetes/cmd/kube-scheduler
build kubectl k8s.io/kubernetes/cmd/kubectl
build kube-controller-manager k8s.io/kubernetes/cmd/kube-controller-manager
# helm: its own module; the binary is rebuilt when helm/go.mod pins another version than the cached one.
helm_version=$(awk '$1=="helm.sh/helm/v4" {print $2; exit}' "$here/helm/go.mod")
if [ -x "$bin/helm" ] && [ "$("$bin/helm" version --template '{{.Version}}')" != "$helm_version" ]; then
  rm -f "$bin/helm"
fi
(cd "$here/helm" && ldflags="-s -w -X helm.sh/helm/v4/internal/version.version=$helm_version" &&
  build helm helm.sh/helm/v4/cmd/helm)
# kwok: its own module too; rebuilt when kwok/go.mod pins another version than the cached binary reports.
kwok_version=$(awk '$1=="sigs.k8s.io/kwok" {print $2; exit}' "$here/kwok/go.mod")
if [ -x "$bin/kwok" ] && ! "$bin/kwok" --version 2>/dev/null | grep -q -- "${kwok_version#v}"; then
  rm -f "$bin/kwok"
fi
(cd "$here/kwok" && ldflags="-s -w" && build kwok sigs.k8s.io/kwok/cmd/kwok)
echo "$bin"
