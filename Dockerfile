# wajah production image: the locked, hash-checked dependencies; the default model pack
# prepared at build time; production mode; an unprivileged user; data in one volume.
#
#   docker build -t wajah .
#   .ci/docker-smoke wajah          # build check: run it with a root key and TLS, probe it
#
# Production mode (the default here) needs a root key (WAJAH_ROOT_KEY_FILE, or WAJAH_ROOT_KEY,
# or WAJAH_KMS_BACKEND=pkcs11 with its settings) and either TLS (WAJAH_TLS_CERT/_KEY) or
# WAJAH_TRUSTED_PROXIES naming the TLS-terminating proxy in front:
#
#   docker run -p 8443:8000 -v wajah-data:/var/lib/wajah -v "$PWD/secrets:/run/secrets:ro" \
#     -e WAJAH_ROOT_KEY_FILE=/run/secrets/root.key \
#     -e WAJAH_TLS_CERT=/run/secrets/tls.crt -e WAJAH_TLS_KEY=/run/secrets/tls.key wajah
#
# WAJAH_MODE=development turns production's refusals off (a generated root key, plain HTTP):
# for trying the image, never for data you keep.

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# gcc builds the exact search's scan kernel (index/_scan.c); the image ships only its result.
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
RUN python -m venv /opt/wajah
COPY requirements-prod.lock ./
# The versions the tests passed with, each file checked against its SHA-256 in the lock
# (requirements-prod.lock: requirements.lock's pins without the extras, plus the build
# backend), so that a tampered or substituted download fails the build.
RUN /opt/wajah/bin/pip install --require-hashes -r requirements-prod.lock
COPY pyproject.toml README.md ./
COPY app ./app
COPY models ./models
COPY index ./index
COPY crashsafe ./crashsafe
# wajah itself: nothing more to download (its dependencies and build backend are installed).
RUN /opt/wajah/bin/pip install --no-deps --no-build-isolation .
# Fold the default pack once, into the image; `serve` then only verifies it.
RUN WAJAH_HOME=/opt/wajah-home WAJAH_MODEL_CACHE_DIR=/opt/wajah-models \
    /opt/wajah/bin/wajah models prepare

FROM python:3.11-slim
# libgl/libglib: OpenCV (pulled in by insightface) links against them even when headless.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/wajah --create-home wajah
COPY --from=build /opt/wajah /opt/wajah
COPY --from=build /opt/wajah-models /opt/wajah-models
ENV PATH=/opt/wajah/bin:$PATH \
    WAJAH_MODE=production \
    WAJAH_HOME=/var/lib/wajah \
    WAJAH_MODEL_CACHE_DIR=/opt/wajah-models \
    WAJAH_HOST=0.0.0.0 \
    WAJAH_PORT=8000
USER wajah
VOLUME ["/var/lib/wajah"]
EXPOSE 8000
# Liveness over whichever scheme the service speaks (-k: the certificate names the public
# host, not 127.0.0.1).
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD if [ -n "$WAJAH_TLS_CERT" ]; then curl -fsSk https://127.0.0.1:8000/readyz; \
      else curl -fsS http://127.0.0.1:8000/readyz; fi || exit 1
CMD ["wajah", "serve"]
