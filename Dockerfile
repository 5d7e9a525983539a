# The kubequant image: the operator (`kubequant operator`, the chart's default) and the workload
# entrypoints of the Jobs it creates (`kubequant workload ...`).
#
# Reproducible by construction: the base image is pinned by digest, and every Python package comes
# from requirements.lock (`make lock`), each version pinned and each file checked against its hash.
#
# Not built or tested here: the development machines have no Docker engine and no registry access,
# so this file stays deliberately plain. Build it with `docker build -t <registry>/kubequant:0.1.0 .`
# and deploy it by the digest the push prints (the chart's image.digest).

# python:3.11-slim-bookworm, pinned by digest: the tag moves with every Python and Debian update,
# the digest names one exact image. NOT VERIFIED FROM HERE: this value was recorded as Docker Hub's
# digest of that tag in a public project's build notes; the development machines cannot reach a
# registry to check it. Before the first build, and to take a newer base, re-pin it:
#   docker buildx imagetools inspect python:3.11-slim-bookworm --format '{{json .Manifest.Digest}}'
# (or pass --build-arg PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:<digest>).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:2e32f7d302adc1c37428355c1e646897c0c53f4fd60b6a551245fb90ee129f91

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# Compilers only for the locked packages that ship no wheel (gym); they stay out of the final image.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/kubequant
WORKDIR /src
# The dependencies first (a layer that changes only with the lock): --require-hashes refuses any
# file whose hash is not in the lock, --no-deps any package that is not in it, and
# --no-build-isolation builds the sdists with the base image's own setuptools instead of fetching
# unpinned build tools.
COPY requirements.lock ./
RUN /opt/kubequant/bin/pip install --require-hashes --no-deps --no-build-isolation -r requirements.lock
# Only what the package is built from (not .venv, .dev-cluster, reports, ...), built with the
# locked setuptools, adding nothing to the locked dependencies.
COPY pyproject.toml setup.py README.md ./
COPY kubequant/ kubequant/
COPY operator/ operator/
COPY workloads/ workloads/
RUN /opt/kubequant/bin/pip install --no-deps --no-build-isolation . \
 && /opt/kubequant/bin/pip check
# The numba kernels (features, intraday execution), compiled once here rather than cold in every pod
# (~10 s on a quiet two-core machine, up to a minute under load): `kubequant precompile` runs two tiny
# Backtests on a synthetic market, and KUBEQUANT_NUMBA_SEED (below) makes every process copy the
# result into its own cache. NUMBA_CPU_NAME=generic here and at run time: numba keys its cache by CPU
# model, and code for the build machine's would be compiled again on nodes of another (docs/features.md).
ENV NUMBA_CPU_NAME=generic
RUN /opt/kubequant/bin/kubequant precompile --cache-dir /opt/kubequant/share/kubequant/numba

FROM ${PYTHON_IMAGE}
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
    PYTHONUNBUFFERED=1 \
    NUMBA_CPU_NAME=generic \
    KUBEQUANT_NUMBA_SEED=/opt/kubequant/share/kubequant/numba
# Numeric, so that the kubelet can verify runAsNonRoot without a passwd lookup.
USER 65532:65532
WORKDIR /home/kubequant
ENTRYPOINT ["kubequant"]
CMD ["operator"]
