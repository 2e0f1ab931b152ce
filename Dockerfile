# wajah production image: the default model pack is prepared at build time, the service runs
# as an unprivileged user, and data lives in one volume.
#
#   docker build -t wajah .
#   docker run -p 8000:8000 -v wajah-data:/var/lib/wajah \
#     -e WAJAH_MODE=production -e WAJAH_ROOT_KEY_FILE=/run/secrets/wajah_root_key wajah

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/wajah
COPY pyproject.toml README.md requirements.lock ./
COPY app ./app
COPY models ./models
COPY index ./index
COPY crashsafe ./crashsafe
# The versions the tests passed with (requirements.lock), not whatever is newest today.
RUN /opt/wajah/bin/pip install -c requirements.lock .
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
    WAJAH_HOME=/var/lib/wajah \
    WAJAH_MODEL_CACHE_DIR=/opt/wajah-models \
    WAJAH_HOST=0.0.0.0 \
    WAJAH_PORT=8000
USER wajah
VOLUME ["/var/lib/wajah"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD curl -fsS http://127.0.0.1:8000/readyz || exit 1
CMD ["wajah", "serve"]
