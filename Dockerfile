# One image for the operator (`ferry operator`) and the movers (`ferry run --spec ...`).
# Build: docker build -t ghcr.io/ferry-dev/ferry:dev .   (CI: .github/workflows/image.yml)
# Without a registry (Debian base from mmdebstrap, host-built wheelhouse, buildah): e2e/node/image.sh.
# BASE: any Debian bookworm image with python3.11 and its venv module. The default is pinned
# by digest (refresh: `docker buildx imagetools inspect python:3.11-slim-bookworm`); the
# local build passes its own base.
ARG BASE=python:3.11-slim-bookworm@sha256:a36c24f9cbdf4fd0f52d67f0823eeac19c2028c637cecc392d97f980d4fec56b

FROM ${BASE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# The locked dependencies first (a layer that survives source edits), each checked against
# its hash. A wheelhouse in requirements/wheels/ (only in the context e2e/node/image.sh
# stages) makes pip offline.
COPY requirements ./requirements
RUN python3.11 -m venv /opt/ferry \
 && if [ -d requirements/wheels ]; then set -- --no-index --find-links requirements/wheels; fi \
 && /opt/ferry/bin/pip install --no-compile --require-hashes "$@" -r requirements/image.lock
COPY pyproject.toml README.md LICENSE ./
COPY ferry ./ferry
# setuptools comes pinned from the lock, so the build needs no index. `pip check` fails the
# build when pyproject.toml's pins and the lock disagree (regenerate: e2e/node/image.sh lock).
RUN /opt/ferry/bin/pip install --no-compile --no-deps --no-build-isolation . \
 && /opt/ferry/bin/pip check
# The non-root uid the operator's pod specs use; movers run read-only-root with /tmp as emptyDir.
# Then the root filesystem is trimmed to what runs, and only that is precompiled
# (image/slim.py: no pip or setuptools, docs, locales, tests; see e2e/test_image.py).
COPY image/slim.py /tmp/slim.py
RUN useradd --uid 65532 --user-group --no-create-home --shell /usr/sbin/nologin ferry \
 && /opt/ferry/bin/python /tmp/slim.py \
 && rm -rf /src /tmp/slim.py

# One layer: the trimmed root filesystem (a FROM of the base would keep what was removed).
FROM scratch
COPY --from=build / /
# tzdata comes with the wheel set (TransferSchedule time zones work without /usr/share/zoneinfo).
ENV PATH=/opt/ferry/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 65532:65532
ENTRYPOINT ["ferry"]
CMD ["--help"]
