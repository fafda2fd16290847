#!/bin/sh
# Drops from a virtual environment what the running service never imports. What is left keeps the
# byte-code pip compiled at install time, which a read-only container could not write at start-up.
#
# usage: docker/slim-venv.sh VENV_DIR [PATH...]
# Always dropped: the installers (pip, setuptools; an image installs nothing at run time) and every
# package's test suite (site-packages/**/tests). Each PATH, relative to site-packages, is dropped too and
# must exist, so the list fails the build, rather than rotting, when a package changes its layout.
set -eu

usage="usage: $0 VENV_DIR [PATH...]"
venv="${1:?$usage}"
shift
python="$venv/bin/python"
site="$("$python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')"

for path in "$@"; do
    if [ ! -e "$site/$path" ]; then
        echo "$0: no $path in $site: drop it from the list" >&2
        exit 2
    fi
    rm -rf "${site:?}/$path"
done
find "$site" -type d -name tests -prune -exec rm -rf {} +
# Python 3.12's venv seeds pip alone, 3.11's setuptools too; pip removes itself last.
installers=pip
if [ -d "$site/setuptools" ]; then installers="setuptools pip"; fi
"$python" -m pip uninstall --yes --quiet $installers
