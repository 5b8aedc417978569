FROM python:3.11-slim
WORKDIR /app
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
COPY pyproject.toml README.md ./
COPY runrelay ./runrelay
COPY worker ./worker
COPY api_shim ./api_shim
RUN pip install ".[server]" && useradd --create-home runrelay
USER runrelay
EXPOSE 8000 5555
CMD ["runrelay", "api", "--host", "0.0.0.0", "--port", "8000"]
