#!/usr/bin/env bash
# Refresh infra/docker/requirements.lock: the exact versions (with hashes) of everything the
# image installs, resolved from pyproject.toml and requirements-image.in for the image's
# platform (CPython 3.11, Linux x86_64, glibc 2.28+), whatever machine runs this.
#
# Versions already in the lock are kept unless an input asks for another (uv prefers the existing
# output file); pass --upgrade (or --upgrade-package NAME) to move them. Needs uv
# (`pip install uv`); the image build itself never resolves anything.
#
# usage: infra/docker/lock.sh [uv pip compile options, e.g. --upgrade-package torch]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
exec uv pip compile pyproject.toml infra/docker/requirements-image.in \
  --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
  --generate-hashes --custom-compile-command "infra/docker/lock.sh" \
  -o infra/docker/requirements.lock "$@"
