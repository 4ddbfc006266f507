# One image for the operator (`ferry operator`) and the movers (`ferry run --spec ...`).
# Build: docker build -t ghcr.io/ferry-dev/ferry:dev .
FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY ferry ./ferry
RUN python -m venv /opt/ferry \
 && /opt/ferry/bin/pip install --no-compile . \
 && /opt/ferry/bin/python -m compileall -q /opt/ferry/lib

FROM python:3.11-slim-bookworm
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
