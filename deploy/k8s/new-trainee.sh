#!/bin/sh
# Make one trainee lab overlay per name: deploy/k8s/trainees/<name>/, a copy of
# overlays/trainee with <name> in place of "example" (namespace triagelab-<name>, objects
# named *-<name>), with its own credentials (new-secrets.sh) and a lab file for drills
# (lab.toml, from deploy/labs/kubernetes.toml). Existing overlays and their
# secrets are kept. deploy/k8s/trainees/ is git-ignored. docs/kubernetes.md.
#
#   deploy/k8s/new-trainee.sh alice bob carol
#   kubectl kustomize --load-restrictor=LoadRestrictionsNone deploy/k8s/trainees/alice \
#     | kubectl apply --server-side -f -
set -eu

here=$(cd "$(dirname "$0")" && pwd)
template="$here/overlays/trainee"
[ "$#" -gt 0 ] || { echo "usage: new-trainee.sh NAME [NAME...]" >&2; exit 2; }

for name in "$@"; do
    # A DNS label short enough for triagelab-<name> and locust-worker-<name>-<hashes>.
    if ! printf '%s\n' "$name" | grep -Eq '^[a-z0-9]([a-z0-9-]{0,18}[a-z0-9])?$' \
        || [ "$name" = example ]; then
        echo "new-trainee.sh: '$name' is not a lower-case name of 1-20 letters, digits and '-'" >&2
        exit 2
    fi
done

for name in "$@"; do
    out="$here/trainees/$name"
    mkdir -p "$out"
    for file in kustomization.yaml namespace.yaml suffix.yaml; do
        sed "s/\bexample\b/$name/g" "$template/$file" >"$out/$file"
    done
    "$here/new-secrets.sh" "$out" >/dev/null
    # A lab file for drills against this lab (labctl drill ... --lab), with its credentials.
    sed 's#^secrets = .*#secrets = "lab-secrets.env"#' "$here/../labs/kubernetes.toml" >"$out/lab.toml"
    echo "deploy/k8s/trainees/$name: namespace triagelab-$name"
done
