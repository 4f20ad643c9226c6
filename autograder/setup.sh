#!/usr/bin/env bash
# Gradescope runs this once, as root, when it builds the autograder image (Ubuntu).
#
# The zip that `attn-course gradescope-build` makes is unpacked into $AUTOGRADER_ROOT/source
# (/autograder/source on Gradescope); the course package is in its course/ folder. This
#  - installs bubblewrap (the grader's sandbox) and Python's venv module through apt;
#  - makes a virtual environment in $AUTOGRADER_ROOT/venv and installs the course package
#    from course/ with its dependencies (torch, nbclient, ipykernel, ...) from the package
#    index pip is configured with. A CPU-only torch makes a much smaller image: point pip at a
#    CPU wheel index (PIP_EXTRA_INDEX_URL) before running this, or edit the torch line below;
#  - checks that the grader starts.
#
# Inside Gradescope's container, unprivileged user namespaces (which bubblewrap needs) may be
# off: the check at the end says so. Then `--sandbox auto` grades in the fallback layer (an
# unprivileged uid per kernel, seccomp, rlimits, cgroups where they can be made): see README.md.
set -euo pipefail

ROOT="${AUTOGRADER_ROOT:-/autograder}"
SOURCE="$ROOT/source/course"

apt-get update
apt-get install -y --no-install-recommends bubblewrap python3 python3-venv python3-pip

python3 -m venv "$ROOT/venv"
"$ROOT/venv/bin/pip" install --upgrade pip
"$ROOT/venv/bin/pip" install torch
"$ROOT/venv/bin/pip" install "$SOURCE"

"$ROOT/venv/bin/attn-course" --help > /dev/null
if bwrap --unshare-user --unshare-pid --ro-bind / / true 2> /dev/null; then
    echo "setup.sh: bubblewrap works here: submissions are graded in its sandbox"
else
    echo "setup.sh: bubblewrap does not work in this container: --sandbox auto will use the fallback layer" >&2
fi
