# imagestream worker / emulator image.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY config ./config
COPY streams ./streams
COPY producers ./producers
COPY emulator ./emulator
RUN pip install .
ENV IMAGESTREAM_WEB_HOST=0.0.0.0 IMAGESTREAM_DATA_DIR=/data
VOLUME ["/data"]
EXPOSE 6066
ENTRYPOINT ["imagestream"]
CMD ["worker", "-l", "info"]
