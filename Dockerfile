# The kubequant image: the operator (`kubequant operator`, the chart's default) and the workload
# entrypoints of the Jobs it creates (`kubequant workload ...`), from one `pip install .`.
#
# Not built or tested here: the development machines have no Docker engine, so this file stays
# deliberately plain. Build it with `docker build -t <registry>/kubequant:0.1.0 .`.
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# Compilers only for dependencies without a wheel; they stay out of the final image.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/kubequant
WORKDIR /src
# Only what the package is built from (not .venv, .dev-cluster, reports, ...).
COPY pyproject.toml setup.py README.md ./
COPY kubequant/ kubequant/
COPY operator/ operator/
COPY workloads/ workloads/
RUN /opt/kubequant/bin/pip install .

FROM python:3.11-slim
# libgomp1: LightGBM's OpenMP runtime.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 65532 kubequant \
 && useradd --uid 65532 --gid 65532 --create-home --home-dir /home/kubequant \
      --shell /usr/sbin/nologin kubequant
COPY --from=build /opt/kubequant /opt/kubequant
ENV PATH=/opt/kubequant/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# Numeric, so that the kubelet can verify runAsNonRoot without a passwd lookup.
USER 65532:65532
WORKDIR /home/kubequant
ENTRYPOINT ["kubequant"]
CMD ["operator"]
