# One image for the compose stack and Kubernetes: workers (`tunetrack worker`), the MLflow
# server and Optuna's dashboard, so all three run the same Optuna / MLflow versions.
# torch from PyPI bundles its CUDA libraries; the GPU comes from the compose `gpu` profile
# (or the Kubernetes gpu component).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

ARG EXTRAS=postgres,dashboard,gpu

RUN useradd --create-home --uid 10001 tunetrack \
    && mkdir /mlartifacts && chown tunetrack:tunetrack /mlartifacts

WORKDIR /app

# 1. Dependencies only, from pyproject.toml: this layer (torch, MLflow, ...) is rebuilt only
#    when pyproject.toml changes, not on every code change.
COPY pyproject.toml ./
RUN python -c "import tomllib, sys; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
extras = [r for e in sys.argv[1].split(',') for r in p['optional-dependencies'][e]]; \
print('\n'.join(p['dependencies'] + extras))" "$EXTRAS" > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# 2. The source: a code change rebuilds from here, in seconds.
COPY README.md ./
COPY models ./models
COPY search ./search
COPY tracking ./tracking
RUN pip install --no-deps ".[$EXTRAS]"
# baked-in studies; compose mounts STUDIES_DIR over them, so new studies need no rebuild
COPY studies ./studies
# PGPASSWORD from a secrets file (PGPASSWORD_FILE, set by docker-compose.yml), then the
# command; Kubernetes' `command:` replaces it and passes PGPASSWORD from a Secret instead.
COPY --chmod=0755 deploy/docker/entrypoint.sh /usr/local/bin/tunetrack-entrypoint
ENTRYPOINT ["tunetrack-entrypoint"]

USER tunetrack
CMD ["tunetrack", "--help"]
