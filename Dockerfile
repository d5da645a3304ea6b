# One image for the compose stack: workers (`tunetrack worker`), the MLflow server and
# Optuna's dashboard, so all three run the same Optuna / MLflow versions.
# torch from PyPI bundles its CUDA libraries; the GPU comes from the compose reservation.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --create-home --uid 10001 tunetrack \
    && mkdir /mlartifacts && chown tunetrack:tunetrack /mlartifacts

WORKDIR /app
COPY pyproject.toml README.md ./
COPY models ./models
COPY search ./search
COPY tracking ./tracking
RUN pip install ".[postgres,dashboard]"
COPY studies ./studies

USER tunetrack
CMD ["tunetrack", "--help"]
