# One image for the operator (`ferry operator`) and the movers (`ferry run --spec ...`).
# Build: docker build -t ghcr.io/ferry-dev/ferry:dev .
# Without a registry (Debian base from mmdebstrap, host-built wheelhouse, buildah): e2e/node/image.sh.
# BASE: any Debian bookworm image with python3.11 and its venv module.
ARG BASE=python:3.11-slim-bookworm

FROM ${BASE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# The locked dependencies first (a layer that survives source edits). A wheelhouse in
# requirements/wheels/ (only in the context e2e/node/image.sh stages) makes pip offline.
COPY requirements ./requirements
RUN python3.11 -m venv /opt/ferry \
 && if [ -d requirements/wheels ]; then set -- --no-index --find-links requirements/wheels; fi \
 && /opt/ferry/bin/pip install --no-compile "$@" -r requirements/image.lock
COPY pyproject.toml README.md LICENSE ./
COPY ferry ./ferry
# setuptools comes pinned from the lock, so the build needs no index. `pip check` fails the
# build when pyproject.toml's pins and the lock disagree (regenerate: e2e/node/image.sh lock).
RUN /opt/ferry/bin/pip install --no-compile --no-deps --no-build-isolation . \
 && /opt/ferry/bin/pip check \
 && /opt/ferry/bin/python -m compileall -q /opt/ferry/lib

FROM ${BASE}
# tzdata comes with the wheel set (TransferSchedule time zones work without /usr/share/zoneinfo).
COPY --from=build /opt/ferry /opt/ferry
ENV PATH=/opt/ferry/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# The non-root uid the operator's pod specs use; movers run read-only-root with /tmp as emptyDir.
RUN useradd --uid 65532 --user-group --no-create-home --shell /usr/sbin/nologin ferry
USER 65532:65532
ENTRYPOINT ["ferry"]
CMD ["--help"]
