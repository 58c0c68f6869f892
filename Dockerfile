FROM python:3.11-slim

WORKDIR /app
COPY pyproject.toml README.md ./
COPY ledger ./ledger
COPY api ./api
COPY workers ./workers
RUN pip install --no-cache-dir .

RUN useradd --create-home magledger && mkdir -p /var/lib/magledger && chown magledger /var/lib/magledger
USER magledger
ENV LEDGER_SIGNING_KEY=/var/lib/magledger/signing.key
EXPOSE 8000
CMD ["magledger", "serve", "--host", "0.0.0.0", "--port", "8000", "--workers", "2"]
