"""The same functions over an S3 object store, with boto3, as serverless
Python functions pass data today: each downloads its input objects, runs,
and uploads its output objects; the next stage starts when the objects are
there.

    python -m thumbnails.on_s3 split INPUT   (S3_ENDPOINT, S3_BUCKET, AWS_* from the environment)
    python -m thumbnails.on_s3 shrink J
    python -m thumbnails.on_s3 assemble OUTPUT
"""

from __future__ import annotations

import io
import os
import sys

import boto3
from botocore.config import Config

from . import pipeline

WORKERS = 4


def client():
    return boto3.client(
        "s3",
        endpoint_url=os.environ["S3_ENDPOINT"],
        region_name="us-east-1",
        config=Config(
            s3={"addressing_style": "path"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        ),
    )


def bucket() -> str:
    return os.environ["S3_BUCKET"]


def download(s3, key: str) -> io.BytesIO:
    body = io.BytesIO()
    s3.download_fileobj(bucket(), key, body)
    body.seek(0)
    return body


def upload(s3, key: str, body: io.BytesIO) -> None:
    body.seek(0)
    s3.upload_fileobj(body, bucket(), key)


def split(video_path: str) -> None:
    s3 = client()
    parts = [io.BytesIO() for _ in range(WORKERS)]
    with open(video_path, "rb", buffering=0) as video:
        pipeline.split(video, parts)
    for j, part in enumerate(parts):
        upload(s3, f"frames-{j}", part)


def shrink(j: str) -> None:
    s3 = client()
    thumbs = io.BytesIO()
    pipeline.shrink(download(s3, f"frames-{j}"), thumbs)
    upload(s3, f"thumbs-{j}", thumbs)


def assemble(sheet_path: str) -> None:
    s3 = client()
    parts = [download(s3, f"thumbs-{j}") for j in range(WORKERS)]
    with open(sheet_path, "wb") as sheet:
        pipeline.assemble(parts, sheet)


if __name__ == "__main__":
    function, *args = sys.argv[1:]
    {"split": split, "shrink": shrink, "assemble": assemble}[function](*args)
